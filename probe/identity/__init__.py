"""The process on each end of a connection: socket-owner tracepoints (socket_owners.bpf.c and
its loader), BTF offsets, /proc prefill, addresses by namespace, and the join at drain; the
``ProcessNamer`` in naming.py ties them for ``KernelProbe``."""
