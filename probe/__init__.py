"""connstats probe: the TC classifier, its loader and the map poller, in rooms by role.

    contract/   what every process shares on the wire: records, FlowBatch, the wire schema
                and its versions, subjects, events, the policy file, the control client,
                errors. Imports nothing else of connstats; sink/ and cli/ import it.
    runtime/    what every process runs on: telemetry, HTTP listener (Host/Origin checks),
                lifecycle, backoff, private files, callers. Imports only contract/.
    kernel/     the classifier (flows.bpf.c) and its loader, tc, pinned maps, handover,
                device ownership and leftovers, the poller; KernelProbe ties them
    publish/    the flow publisher and its outbox
    watch/      devices that come and go: link monitor, Docker, containers, filter guard
    api/        the HTTP API and its totals, the control service, the self-metrics
    policy/     microsegmentation: resolve, kernel tables, the policy service, violations
    identity/   the process on each end of a connection: socket-owner tracepoints, BTF
                offsets, the join at drain
    daemon.py   ProbeDaemon, which runs one interval after the other
    seams.py    ProbePort, what a service may ask of it
    compose.py  build_probe, the composition root (and the CLI's one door into the probe)

Importing this package does not import bcc; only ``connstats.probe.kernel.loader``
and ``connstats.probe.identity.socket_owners`` do.
"""
