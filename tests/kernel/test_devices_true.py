"""Devices stay true (issue 8), on real veths, real BPF and a real nats-server.

- A device attached by ``--iface`` or by a control request that is deleted is released
  (last interval published under its name, a ``gone`` event, gone from ``list``); an
  ``--iface`` name made anew is attached again, once, and counted exactly; an ad-hoc
  one is not.
- A second probe is refused a device a running probe owns, with that probe's pid, until
  the first one detaches, closes or is killed (SIGKILL, as a real process).
- A filter replaced or removed by someone else is noticed within an interval: a
  ``replaced``/``lost`` event, the device leaves ``list``, and their filter stays.
- Names with control characters or longer than 15 bytes are refused.
"""
import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import IPRoute

from connstats.probe.contract import NatsOptions
from connstats.probe.contract.errors import DeviceError
from connstats.probe.kernel.tc import ETH_P_ALL, FILTER_HANDLE, FILTER_PRIORITY, HOOK_PARENTS, TcAttacher
from tests.fixtures.docker import published
from tests.fixtures.netns import delete_host_veth, make_host_veth, require_root, sh
from tests.fixtures.wait import seconds_until

pytestmark = pytest.mark.kernel

UDP_FRAME = 14 + 20 + 8
INTERVAL = 0.5


def listed(daemon) -> list[tuple[str, int]]:
    """What `connstats list` shows: (name, ifindex) of every attached device."""
    return [(d.name, d.ifindex) for d in daemon.devices()]


def at_our_place(ifname: str) -> dict[str, str]:
    """Per hook, the `tc filter show` line of whatever filter sits at pref 3159."""
    out = {}
    for hook in HOOK_PARENTS:
        lines = sh("tc", "filter", "show", "dev", ifname, hook).stdout.splitlines()
        found = [line for line in lines if f"pref {FILTER_PRIORITY} " in line and "handle" in line]
        if found:
            out[hook] = found[0]
    return out


def filter_ids(ifindex: int) -> dict[str, int]:
    """Per hook, the program id at our priority and handle (pyroute2 wants its own thread
    when an event loop runs)."""
    with TcAttacher() as tc:
        return tc.filter_program_ids(ifindex)


def ifindex_of(ifname: str) -> int:
    return int(open(f"/sys/class/net/{ifname}/ifindex").read())


def totals(records, **match) -> tuple[int, int]:
    chosen = [r for r in records if all(getattr(r, k) == v for k, v in match.items())]
    return sum(r.packets for r in chosen), sum(r.bytes for r in chosen)


def quiet_pair(a, b) -> None:
    a.quiet([b])
    b.quiet([a])


@contextlib.asynccontextmanager
async def running(nats_url: str, tmp_path, ifaces=(), host: str = "true-test"):
    """The probe as `connstats probe --iface ...` builds it (link watcher, filter guard,
    control plane), with its device locks under ``tmp_path``; runs until the block ends."""
    from connstats.probe.compose import ProbeConfig, build_probe

    config = ProbeConfig(host=host, nats=NatsOptions(servers=(nats_url,)), ifaces=list(ifaces),
                         interval=INTERVAL, state_dir=tmp_path)
    (tmp_path / "outbox").mkdir(exist_ok=True)
    daemon = build_probe(config)
    daemon.settings.probe.device_locks = str(tmp_path / "locks")
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    assert daemon.ready.is_set(), "the probe did not get ready within 60 s"
    try:
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def summary(events, *names) -> list[tuple]:
    return [(e["event"], e["ifname"], e["ifindex"]) for e in events if e.get("ifname") in names]


# -- 1. deleted devices are released; --iface names are kept -----------------------------------


async def test_an_iface_device_deleted_is_released_and_made_anew_is_attached_once_and_counted(
        nats_server, test_network, tmp_path):
    require_root()
    a, b = test_network.hosts
    quiet_pair(a, b)
    old = ifindex_of(a.host_if)
    async with running(nats_server.url, tmp_path, ifaces=[a.host_if]) as daemon:
        assert listed(daemon) == [(a.host_if, old)]
        a.traffic("udp", b.ipv4, 5353, 40001, 20, 100)

        delete_host_veth(a)
        released = await seconds_until(lambda: listed(daemon) == [], 2.0)
        assert at_our_place(b.host_if) == {}  # b was never ours

        new = make_host_veth(a, test_network.bridge)
        assert new != old
        attached = await seconds_until(lambda: listed(daemon) == [(a.host_if, new)], 2.0)
        quiet_pair(a, b)
        sent = a.traffic("udp", b.ipv4, 5353, 40002, 30, 200)
        assert sent == {"sent": 30}
        await asyncio.sleep(3 * INTERVAL)  # more events and resyncs change nothing
        assert listed(daemon) == [(a.host_if, new)]
        assert [hook for hook in at_our_place(a.host_if)] == ["ingress", "egress"]
    assert at_our_place(a.host_if) == {}
    print(f"released {released * 1000:.0f} ms after the delete, attached again {attached * 1000:.0f} ms "
          "after it was made anew")

    records, events = await published(nats_server.url)
    assert totals(records, ifindex=old, direction="egress", src_port=40001) == (20, 20 * (UDP_FRAME + 100))
    assert {r.ifname for r in records if r.ifindex == old} == {a.host_if}  # the last interval, named
    assert totals(records, ifindex=new, direction="egress", src_port=40002) == (30, 30 * (UDP_FRAME + 200))
    assert totals(records, ifindex=new, direction="egress") == (30, 30 * (UDP_FRAME + 200))
    # started with --iface; deleted; made anew; the final stop detaches without events
    assert summary(events, a.host_if) == [("attached", a.host_if, old), ("gone", a.host_if, old),
                                          ("attached", a.host_if, new)]
    assert [e.get("source") for e in events if e.get("ifname") == a.host_if] == [None, "iface", "iface"]


async def test_a_device_attached_by_a_control_request_is_released_when_deleted_and_not_again(
        nats_server, test_network, tmp_path):
    require_root()
    from connstats.probe.contract.control import ControlClient

    a, b = test_network.hosts
    options = NatsOptions(servers=(nats_server.url,))
    async with running(nats_server.url, tmp_path, host="adhoc") as daemon:
        async with ControlClient(options, "adhoc") as client:
            reply = await client.request("attach", {"iface": b.host_if})
            assert reply["device"]["name"] == b.host_if
            old = reply["device"]["ifindex"]
            delete_host_veth(b)
            await seconds_until(lambda: listed(daemon) == [], 2.0)
            assert (await client.request("list"))["devices"] == []
            new = make_host_veth(b, test_network.bridge)
            await asyncio.sleep(4 * INTERVAL)
            assert (await client.request("list"))["devices"] == []
            assert at_our_place(b.host_if) == {}
    _, events = await published(nats_server.url)
    assert summary(events, b.host_if) == [("attached", b.host_if, old), ("gone", b.host_if, old)]
    assert new != old


# -- 2. one owner per device --------------------------------------------------------------------


@pytest.fixture
def second_classifier():
    require_root()
    from connstats.probe.kernel.loader import load_classifier

    program = load_classifier(capacity=64)
    yield program
    program.close()


def registry(program, lock_dir):
    from connstats.probe.kernel.devices import DeviceRegistry
    from connstats.probe.kernel.ownership import DeviceLocks

    return DeviceRegistry(program, DeviceLocks(lock_dir))


def test_a_second_probe_is_refused_with_the_owners_pid_until_the_first_detaches_or_closes(
        classifier, second_classifier, test_network, tmp_path):
    from connstats.probe.kernel.ownership import DeviceOwned

    a, _ = test_network.hosts
    locks = tmp_path / "devices"
    first, second = registry(classifier, locks), registry(second_classifier, locks)
    try:
        device = first.attach(a.host_if)
        assert stat.S_IMODE(os.stat(locks).st_mode) == 0o700
        with pytest.raises(DeviceOwned) as refused:
            second.attach(a.host_if)
        assert str(refused.value) == (f"{a.host_if} is attached by the connstats probe with pid "
                                      f"{os.getpid()}; detach it there first")
        assert refused.value.pid == os.getpid() and isinstance(refused.value, DeviceError)
        assert second.owner_of(device.ifindex) == first.owner_of(device.ifindex) == os.getpid()
        assert second.devices() == []
        with TcAttacher() as tc:  # the refused probe touched nothing
            assert tc.filter_program_ids(device.ifindex) == first.program_ids()

        first.detach(a.host_if)
        assert second.owner_of(device.ifindex) is None
        assert os.listdir(locks) == []
        second.attach(a.host_if)
        with pytest.raises(DeviceOwned):
            first.attach(a.host_if)
        second.close()  # closing gives every device up
        second = registry(second_classifier, locks)
        first.attach(a.host_if)
        assert first.owner_of(device.ifindex) == os.getpid()
    finally:
        first.detach_all()
        second.detach_all()
        first.close()
        second.close()


OWNER = textwrap.dedent("""
    import sys, time
    from connstats.probe.kernel.devices import DeviceRegistry
    from connstats.probe.kernel.loader import load_classifier
    from connstats.probe.kernel.ownership import DeviceLocks
    registry = DeviceRegistry(load_classifier(capacity=64), DeviceLocks(sys.argv[1]))
    registry.attach(sys.argv[2])
    print("attached", flush=True)
    time.sleep(600)
""")


def test_a_probe_killed_with_sigkill_lets_the_next_probe_take_its_device_over(
        classifier, test_network, tmp_path):
    from connstats.probe.kernel.ownership import DeviceOwned

    a, _ = test_network.hosts
    locks = tmp_path / "devices"
    child = subprocess.Popen([sys.executable, "-c", OWNER, str(locks), a.host_if],
                             stdout=subprocess.PIPE, text=True)
    probe = registry(classifier, locks)
    try:
        assert child.stdout.readline().strip() == "attached"
        ifindex = ifindex_of(a.host_if)
        assert probe.owner_of(ifindex) == child.pid
        with pytest.raises(DeviceOwned, match=f"^{a.host_if} is attached by the connstats probe with "
                                              f"pid {child.pid}; detach it there first$"):
            probe.attach(a.host_if)

        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert probe.owner_of(ifindex) is None
        with TcAttacher() as tc:  # the dead probe's filters are still there
            theirs = tc.filter_program_ids(ifindex)
            assert set(theirs) == {"ingress", "egress"} and theirs != probe.program_ids()
            probe.attach(a.host_if)  # taken over: ours replace theirs
            assert tc.filter_program_ids(ifindex) == probe.program_ids()
        assert probe.owner_of(ifindex) == os.getpid()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        probe.detach_all()
        probe.close()
    assert at_our_place(a.host_if) == {}


# -- 3. a filter replaced or removed by someone else ------------------------------------------


@contextlib.contextmanager
def foreign_program():
    """Somebody else's classifier (passes every packet on), loaded but not attached."""
    from bcc import BPF

    bpf = BPF(text=b"int foreign_at_ours(struct __sk_buff *skb) { return -1; }")
    try:
        yield bpf.load_func(b"foreign_at_ours", BPF.SCHED_CLS)
    finally:
        bpf.cleanup()


def put_at_our_place(ifindex: int, hook: str, fd: int) -> None:
    """`tc filter replace dev X <hook> pref 3159 handle 0xc57 bpf da ...` with another program."""
    with IPRoute() as ipr:
        ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, parent=HOOK_PARENTS[hook],
               prio=FILTER_PRIORITY, protocol=ETH_P_ALL, fd=fd, name="foreign_at_ours",
               classid=1, direct_action=True)


def remove_at_our_place(ifname: str, hook: str) -> None:
    sh("tc", "filter", "del", "dev", ifname, hook, "pref", str(FILTER_PRIORITY), check=False)


async def test_a_replaced_filter_is_noticed_within_an_interval_and_left_in_place(
        nats_server, test_network, tmp_path):
    require_root()
    a, b = test_network.hosts
    quiet_pair(a, b)
    ifindex = ifindex_of(a.host_if)
    with foreign_program() as foreign:
        foreign_id = program_id_of(foreign.fd)
        try:
            async with running(nats_server.url, tmp_path, ifaces=[a.host_if]) as daemon:
                a.traffic("udp", b.ipv4, 5353, 40003, 10, 100)
                await asyncio.to_thread(put_at_our_place, ifindex, "ingress", foreign.fd)
                noticed = await seconds_until(lambda: listed(daemon) == [], INTERVAL + 0.5)
                a.traffic("udp", b.ipv4, 5353, 40004, 5, 100)  # not ours to count any more
                await asyncio.sleep(3 * INTERVAL)  # the link watcher does not take it back
                assert listed(daemon) == []
                assert await asyncio.to_thread(filter_ids, ifindex) == {"ingress": foreign_id}
            # stopping the probe left it alone too
            assert await asyncio.to_thread(filter_ids, ifindex) == {"ingress": foreign_id}
        finally:
            remove_at_our_place(a.host_if, "ingress")
    print(f"noticed {noticed * 1000:.0f} ms after the replace")
    records, events = await published(nats_server.url)
    assert totals(records, ifindex=ifindex, src_port=40003) == (10, 10 * (UDP_FRAME + 100))
    assert {r.ifname for r in records if r.ifindex == ifindex} == {a.host_if}
    assert totals(records, src_port=40004) == (0, 0)
    assert summary(events, a.host_if) == [("attached", a.host_if, ifindex), ("replaced", a.host_if, ifindex)]
    replaced = events[-1] if events[-1]["event"] == "replaced" else next(e for e in events if e["event"] == "replaced")
    assert replaced["hooks"] == {"ingress": {"kind": "bpf", "handle": FILTER_HANDLE, "prog_id": foreign_id,
                                             "prog_name": "foreign_at_ours"}}


async def test_a_removed_filter_is_noticed_within_an_interval_as_lost(nats_server, test_network, tmp_path):
    require_root()
    a, _ = test_network.hosts
    ifindex = ifindex_of(a.host_if)
    async with running(nats_server.url, tmp_path, ifaces=[a.host_if]) as daemon:
        remove_at_our_place(a.host_if, "egress")
        await seconds_until(lambda: listed(daemon) == [], INTERVAL + 0.5)
        assert at_our_place(a.host_if) == {}  # our ingress filter went with the device
    _, events = await published(nats_server.url)
    assert summary(events, a.host_if) == [("attached", a.host_if, ifindex), ("lost", a.host_if, ifindex)]
    assert next(e for e in events if e["event"] == "lost")["hooks"] == {"egress": None}


def test_detach_removes_only_filters_that_run_our_programs(classifier, test_network, tmp_path):
    a, _ = test_network.hosts
    probe = registry(classifier, tmp_path / "devices")
    try:
        device = probe.attach(a.host_if)
        with foreign_program() as foreign:
            try:
                put_at_our_place(device.ifindex, "egress", foreign.fd)
                probe.detach(a.host_if)
                with TcAttacher() as tc:
                    assert tc.filter_program_ids(device.ifindex) == {"egress": program_id_of(foreign.fd)}
            finally:
                remove_at_our_place(a.host_if, "egress")
    finally:
        probe.detach_all()
        probe.close()


def program_id_of(fd: int) -> int:
    from connstats.probe.kernel.tc import program_id

    return program_id(fd)


# -- 4. names that cannot be interface names ----------------------------------------------------


@pytest.mark.parametrize("suffix, message", [
    ("\x00x", "contains '\\x00', which no interface name can; see `ip link`"),
    ("\n", "contains '\\n', which no interface name can; see `ip link`"),
    ("\x1b", "contains '\\x1b', which no interface name can; see `ip link`"),
    ("x" * 16, "bytes long, but Linux allows at most 15; see `ip link`"),
])
def test_a_name_with_control_characters_or_too_long_is_refused(classifier, test_network, tmp_path,
                                                              suffix, message):
    from connstats.probe.kernel.devices import check_interfaces

    a, _ = test_network.hosts
    name = a.host_if + suffix
    probe = registry(classifier, tmp_path / "devices")
    try:
        with pytest.raises(DeviceError) as refused:
            probe.attach(name)
        assert str(refused.value).startswith(f"interface name {name!r} ")
        assert str(refused.value).endswith(message) and "\n" not in str(refused.value)
        assert probe.devices() == [] and at_our_place(a.host_if) == {}
        with pytest.raises(DeviceError, match="see `ip link`"):
            check_interfaces([name])
    finally:
        probe.detach_all()
        probe.close()
