"""``connstats doctor``: check, in order, everything connstats needs on this host.

    privileges ─ bcc ─ kernel headers ─ BPF load ─ TC attach (throwaway veth pair) ─ processes
    (BTF, tracefs, tracepoints) ─ quality (BTF, tracefs, tracepoints) ─ pinned state ─ NATS ─ store

Each check prints ``pass`` or ``FAIL`` with what it saw, and on failure the fix. A check
whose prerequisite failed is skipped. The exit status is 1 if any check failed.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import typer

from connstats.probe.contract import ConnstatsError

from .config import Config, parse_store
from .options import ConfigFile, Nats, NatsCreds, NatsFlags, Store, TlsCa, TlsCert, TlsKey, load_config

app = typer.Typer()

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
DOCTOR_VETH = ("csdoctor0", "csdoctor1")


class CheckFailed(Exception):
    """A failed check: ``str`` is what was seen, ``fix`` what to do."""

    def __init__(self, seen: str, fix: str) -> None:
        super().__init__(seen)
        self.fix = fix


@dataclass
class Check:
    name: str
    run: Callable[[dict], str]  # returns what it saw; raises CheckFailed
    needs: tuple[str, ...] = ()


# -- the checks; ``state`` carries what one check hands to the next (the loaded program) ----


def check_privileges(state: dict) -> str:
    if os.geteuid() == 0:
        return "running as root"
    caps = effective_capabilities()
    bpf = {CAP_BPF, CAP_PERFMON} <= caps or CAP_SYS_ADMIN in caps
    if bpf and CAP_NET_ADMIN in caps:
        return "not root, but CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are effective"
    raise CheckFailed("not root and without CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN) and CAP_NET_ADMIN",
                      "run as root (sudo connstats ...) or grant the capabilities with setcap")


def effective_capabilities(status: str | None = None) -> set[int]:
    text = status if status is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            bits = int(line.split()[1], 16)
            return {n for n in range(64) if bits >> n & 1}
    return set()


def check_bcc(state: dict) -> str:
    try:
        import bcc
    except ImportError as exc:
        raise CheckFailed(f"`import bcc` failed: {exc}",
                          "apt-get install python3-bpfcc, and use a venv made with "
                          "--system-site-packages (`make install` does both)") from None
    return f"bcc imports from {Path(bcc.__file__).parent}"


def check_headers(state: dict) -> str:
    build = Path("/lib/modules") / os.uname().release / "build"
    if (build / "include").exists():
        return f"{build} -> {build.resolve()}"
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return "the kernel provides its headers (/sys/kernel/kheaders.tar.xz)"
    raise CheckFailed(f"{build} is missing, and the kernel has no kheaders",
                      "run `make install` or `sh deploy/kernel-headers.sh`: it installs the headers "
                      "package, or on kernels without one (cloud, WSL, micro-VMs) Debian's headers and "
                      "links /lib/modules/$(uname -r)/{build,source} to them")


def check_bpf_load(state: dict) -> str:
    from connstats.probe.kernel.loader import load_classifier
    try:
        state["program"] = load_classifier(capacity=16)
    except ConnstatsError as exc:
        raise CheckFailed(str(exc), "see the message above; then run `connstats doctor` again") from None
    return "compiled and loaded the classifier (16 connections)"


def check_tc_attach(state: dict) -> str:
    from pyroute2 import IPRoute

    from connstats.probe.kernel.tc import TcAttacher
    program = state["program"]
    with IPRoute() as ipr:
        _delete_link(ipr, DOCTOR_VETH[0])
        try:
            ipr.link("add", ifname=DOCTOR_VETH[0], kind="veth", peer=DOCTOR_VETH[1])
            ifindex = ipr.link_lookup(ifname=DOCTOR_VETH[0])[0]
            attacher = TcAttacher()
            try:
                attacher.attach(ifindex, program.ingress_fd, program.egress_fd)
                hooks = attacher.our_filters(ifindex)
                attacher.detach(ifindex)
            finally:
                attacher.close()
        except ConnstatsError as exc:
            raise CheckFailed(str(exc), "check that the kernel has CONFIG_NET_CLS_BPF and "
                              "CONFIG_NET_SCH_INGRESS (clsact)") from None
        except Exception as exc:  # pyroute2's NetlinkError
            raise CheckFailed(f"creating a veth pair failed: {exc}", "check that the kernel has veth "
                              "support (CONFIG_VETH) and that you are root") from None
        finally:
            _delete_link(ipr, DOCTOR_VETH[0])
    if sorted(hooks) != ["egress", "ingress"]:
        raise CheckFailed(f"the filters showed up on {hooks or 'no hook'}", "check `tc filter show` support")
    return f"attached to and detached from a throwaway veth {DOCTOR_VETH[0]} (ingress and egress)"


def _delete_link(ipr: Any, name: str) -> None:
    for index in ipr.link_lookup(ifname=name):
        ipr.link("del", index=index)


def check_nats(state: dict) -> str:
    from connstats.probe.contract import connect
    from connstats.sink.compose import check_jetstream
    options = state["nats"]

    async def probe() -> None:
        nc = await connect(options, name="connstats-doctor")
        try:
            await check_jetstream(nc)
        finally:
            await nc.close()

    try:
        asyncio.run(probe())
    except ConnstatsError as exc:
        raise CheckFailed(str(exc), "start `connstats up` (it runs an embedded nats-server), or "
                          "`nats-server -js`, or pass --nats URL") from None
    return f"NATS and JetStream answer at {', '.join(options.servers)}"


def check_store(state: dict) -> str:
    spec = state["store"]
    kind, path = parse_store(spec)
    if kind == "sqlite" and not Path(path).parent.exists():
        ancestor = next(p for p in Path(path).absolute().parents if p.exists())
        if os.access(ancestor, os.W_OK):
            return f"{Path(path).parent} does not exist yet; `up` and `sink` create it"
        raise CheckFailed(f"{Path(path).parent} does not exist and {ancestor} is not writable",
                          "create the directory or choose another --store sqlite:PATH")
    from connstats.sink.compose import check_store as ping
    from connstats.sink.stores import make_store

    async def probe() -> None:
        store = make_store(spec, influx=state["influx"]() if kind == "influxdb" else None)
        try:
            await ping(store)
        finally:
            await store.close()

    try:
        asyncio.run(probe())
    except ConnstatsError as exc:
        raise CheckFailed(str(exc), "fix the store settings (--store, --influx-*, INFLUXDB_V2_*)") from None
    return f"{spec} takes writes"


def check_processes(state: dict) -> str:
    from connstats.probe.compose import process_support
    try:
        return process_support()
    except ConnstatsError as exc:
        raise CheckFailed(f"processes cannot be named: {exc}",
                          "run the probe with --no-processes, or on a kernel with BTF and the sock tracepoints; "
                          "counting works either way") from None


def check_quality(state: dict) -> str:
    from connstats.probe.compose import quality_support
    try:
        return quality_support()
    except ConnstatsError as exc:
        raise CheckFailed(f"RTT, retransmits and drops cannot be measured: {exc}",
                          "run the probe with --no-quality, or on a kernel with BTF and the tcp and skb "
                          "tracepoints; counting works either way") from None


def check_pinned_state(state: dict) -> str:
    from connstats.probe.kernel.leftovers import leftovers

    found = leftovers()
    orphans = [f for f in found if not f.owner]
    if orphans:
        raise CheckFailed("; ".join(f.describe() for f in orphans),
                          "its filters still count into maps nobody drains: start the probe with "
                          "that state directory to publish them, or `connstats reset --all`")
    if not found:
        return "no pinned maps"
    return "; ".join(f.describe() for f in found)


CHECKS = (
    Check("privileges", check_privileges),
    Check("bcc", check_bcc),
    Check("kernel headers", check_headers),
    Check("BPF load", check_bpf_load, ("privileges", "bcc", "kernel headers")),
    Check("TC attach", check_tc_attach, ("BPF load",)),
    Check("processes", check_processes, ("privileges",)),
    Check("quality", check_quality, ("privileges",)),
    Check("pinned state", check_pinned_state, ("privileges",)),
    Check("NATS", check_nats),
    Check("store", check_store),
)


def run_checks(state: dict, checks=CHECKS, echo=typer.echo) -> bool:
    passed: set[str] = set()
    for check in checks:
        missing = [n for n in check.needs if n not in passed]
        if missing:
            echo(f"[skip] {check.name}: needs {', '.join(missing)}")
            continue
        try:
            seen = check.run(state)
        except CheckFailed as exc:
            echo(f"[FAIL] {check.name}: {exc}\n       fix: {exc.fix}")
            continue
        passed.add(check.name)
        echo(f"[pass] {check.name}: {seen}")
    program = state.pop("program", None)
    if program is not None:
        program.close()
    return len(passed) == len(checks)


@app.command()
def doctor(
    nats: Nats = None, store: Store = None, nats_creds: NatsCreds = None, tls_ca: TlsCa = None,
    tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Check that this host can run connstats, and say how to fix what is missing."""
    cfg: Config = load_config(config)
    state = {"nats": NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key).options(cfg, name="connstats-doctor"),
             "store": cfg.store_spec(store), "influx": cfg.influx}
    if not run_checks(state):
        raise typer.Exit(1)
