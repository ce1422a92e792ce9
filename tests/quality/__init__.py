"""The quality tracepoints against the kernel's own counters, and their pure parts."""
