"""The kernel side of the probe: the classifier and what keeps it counting.

    flows.bpf.c      the TC classifier: its maps and entry points; it includes
    flows_*.h        structs (the schema), parse, policy, count: one header per concern
    loader.py        compiles and loads it (BCC), the numpy dtypes of its maps
    tc.py            clsact qdisc and filters (pyroute2)
    devices.py       attached devices, their directions and owners
    ownership.py     one probe per device: a flock per ifindex
    pins.py          the maps pinned on bpffs, so counts survive a restart
    handover.py      an upgrade reads the old maps before it replaces the filter
    leftovers.py     what an earlier probe left behind, and its reset
    poller.py        drains the maps into FlowBatch columns every interval
    kernel_probe.py  KernelProbe: all of the above for one probe

Importing this package does not import bcc; only ``loader`` does.
"""
