"""The link watcher's decisions, with fake links and a fake kernel (no root, no netlink)."""
import asyncio

import pytest

from connstats.probe.contract.errors import ConfigError, DeviceError
from connstats.probe.contract.record import Owner
from connstats.probe.runtime.backoff import Backoff
from connstats.probe.watch.containers import Netns
from connstats.probe.watch.link_monitor import DeviceKey, LinkState
from connstats.probe.watch.settings import LinkPatterns, WatchSettings
from connstats.probe.watch.watcher import LinkWatcher, link_watcher
from tests.fixtures.watch import FakeDaemon

NETNS = 4026531833


class FakeIndex:
    def __init__(self, owners: dict | None = None) -> None:
        self.owners = owners or {}

    def owner(self, nsid):
        return self.owners.get(nsid, (None, None))


def link(ifindex: int, name: str, up: bool = True, nsid: int | None = None) -> LinkState:
    return LinkState(DeviceKey(NETNS, ifindex, name), "veth", up, nsid)


@pytest.fixture
def watcher():
    daemon = FakeDaemon()
    w = LinkWatcher(daemon, WatchSettings(LinkPatterns(("veth*", "cs?"), ("lo", "vethskip*")),
                                          backoff=Backoff(first=0.05, ceiling=0.2)), FakeIndex(), monitor=False)
    w.exists = lambda key: True
    return w


async def see(watcher, state: LinkState, gone: bool = False) -> None:
    watcher.probe.kernel.names[state.ifindex] = state.name
    watcher.apply(state, gone=gone)
    for ifindex in sorted(watcher._dirty):
        watcher._dirty.discard(ifindex)
        await watcher.settle(ifindex, asyncio.get_running_loop().time())


def summary(daemon) -> list[tuple]:
    return [(e["event"], e["ifname"], e["ifindex"]) for e in daemon.events]


@pytest.mark.parametrize("name, wanted", [
    ("veth1a2b", True), ("csX", True), ("csXY", False), ("eth0", False), ("lo", False),
    ("vethskip1", False), ("VETH1", False),
])
def test_patterns_match_auto_globs_minus_excludes(name, wanted):
    assert LinkPatterns(("veth*", "cs?"), ("lo", "vethskip*")).matches(name) is wanted


def test_lo_is_excluded_by_default_and_bad_globs_are_refused():
    service = link_watcher(["*"], exclude=["docker0"])(FakeDaemon())
    assert service.settings.patterns.exclude == ("lo", "docker0")
    assert not service.settings.patterns.matches("lo")
    assert service.settings.patterns.matches("eth0")
    with pytest.raises(ConfigError):
        LinkPatterns(("net/eth0",))
    with pytest.raises(ConfigError):
        LinkPatterns(("",))


def test_backoff_doubles_up_to_its_ceiling():
    assert [Backoff(0.5, 2.0, 30.0).delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


async def test_a_matching_device_is_attached_when_it_comes_up(watcher):
    await see(watcher, link(7, "veth7", up=False))
    assert watcher.probe.devices() == []
    await see(watcher, link(7, "veth7", up=True))
    assert [d.ifindex for d in watcher.probe.devices()] == [7]
    assert summary(watcher.probe) == [("attached", "veth7", 7)]
    await see(watcher, link(7, "veth7", up=False))  # down again: still attached
    assert [d.ifindex for d in watcher.probe.devices()] == [7]


async def test_excluded_and_unmatched_devices_are_left_alone(watcher):
    await see(watcher, link(3, "eth0"))
    await see(watcher, link(4, "vethskip9"))
    await see(watcher, link(1, "lo"))
    assert watcher.probe.devices() == [] and watcher.probe.events == []


async def test_a_deleted_device_is_detached_as_gone_and_keeps_its_labels(watcher):
    watcher._index = FakeIndex({5: (Netns(4026532000, 5, 0, "blue"), None)})
    await see(watcher, link(9, "veth9", nsid=5))
    assert watcher.probe.kernel.owners[9] == Owner(container_name="blue", runtime="netns")
    await see(watcher, link(9, "veth9", nsid=5), gone=True)
    assert watcher.probe.devices() == []
    assert watcher.probe.kernel.owners[9] == Owner(container_name="blue", runtime="netns")  # the final drain is labelled
    assert summary(watcher.probe) == [("attached", "veth9", 9), ("gone", "veth9", 9)]
    assert (watcher.probe.events[0]["netns"], watcher.probe.events[0]["netns_name"]) == (4026532000, "blue")
    assert watcher.stats["gone"] == 1


async def test_same_name_with_a_new_ifindex_is_attached_again(watcher):
    await see(watcher, link(9, "veth9"))
    await see(watcher, link(9, "veth9"), gone=True)
    await see(watcher, link(12, "veth9"))
    assert [d.ifindex for d in watcher.probe.devices()] == [12]
    assert summary(watcher.probe) == [("attached", "veth9", 9), ("gone", "veth9", 9), ("attached", "veth9", 12)]


async def test_a_reused_ifindex_is_a_new_device(watcher):
    await see(watcher, link(9, "veth9", nsid=1))
    watcher.apply(link(9, "veth9"), gone=True)  # both before the worker runs
    await see(watcher, link(9, "vethB"))
    assert summary(watcher.probe) == [("attached", "veth9", 9), ("gone", "veth9", 9), ("attached", "vethB", 9)]
    assert watcher.attached[9].name == "vethB"


async def test_a_rename_out_of_the_pattern_detaches(watcher):
    await see(watcher, link(9, "veth9"))
    await see(watcher, link(9, "eth1"))
    assert watcher.probe.devices() == []
    assert summary(watcher.probe) == [("attached", "veth9", 9), ("gone", "veth9", 9)]


async def test_a_failed_attach_is_reported_and_retried_with_backoff(watcher):
    watcher.probe.kernel.fail[9] = DeviceError("device 9 cannot take a clsact qdisc")
    await see(watcher, link(9, "veth9"))
    assert watcher.probe.devices() == []
    [failed] = watcher.probe.events
    assert (failed["event"], failed["ifname"], failed["reason"], failed["attempt"], failed["retry_in"]) == (
        "failed", "veth9", "device 9 cannot take a clsact qdisc", 1, 0.05)
    await see(watcher, link(9, "veth9"))  # an event before the retry is due changes nothing
    assert len(watcher.probe.events) == 1
    del watcher.probe.kernel.fail[9]
    await asyncio.sleep(0.08)  # the retry is due and marked dirty
    assert 9 in watcher._dirty
    await watcher.settle(9, asyncio.get_running_loop().time())
    assert [d.ifindex for d in watcher.probe.devices()] == [9]
    assert watcher.stats["failed"] == 1 and watcher.stats["attached"] == 1


async def test_a_device_that_vanished_during_attach_is_not_retried(watcher):
    watcher.probe.kernel.fail[9] = DeviceError("device 9 is gone")
    watcher.exists = lambda key: False
    await see(watcher, link(9, "veth9"))
    assert watcher.probe.events == [] and 9 not in watcher.links and 9 not in watcher._failures
    assert watcher.stats["vanished"] == 1


async def test_resync_heals_missed_events_and_respects_foreign_detaches(watcher):
    await see(watcher, link(9, "veth9"))
    await see(watcher, link(10, "veth10"))
    watcher.probe.kernel.detach(10)  # the control plane detached it
    watcher.probe.kernel.names[11] = "veth11"
    watcher.dump = lambda netns: {10: link(10, "veth10"), 11: link(11, "veth11")}  # 9 left unseen
    await watcher.resync()
    for ifindex in sorted(watcher._dirty):
        watcher._dirty.discard(ifindex)
        await watcher.settle(ifindex, 0.0)
    assert [d.ifindex for d in watcher.probe.devices()] == [11]
    assert summary(watcher.probe)[2:] == [("gone", "veth9", 9), ("attached", "veth11", 11)]


async def test_resync_keeps_what_netlink_said_while_the_dump_ran(watcher):
    def dump(netns):
        watcher.apply(link(9, "veth9"), gone=True)  # deleted while the dump was running
        return {9: link(9, "veth9")}

    watcher.dump = dump
    await watcher.resync()
    assert 9 not in watcher.links


async def test_a_deleted_device_attached_by_someone_else_is_released_too(watcher):
    watcher.probe.kernel.names[30] = "eth3"
    watcher.probe.kernel.attach(30)  # by hand (control plane); not a pattern match
    await see(watcher, link(30, "eth3"))
    assert [d.ifindex for d in watcher.probe.devices()] == [30]
    await see(watcher, link(30, "eth3"), gone=True)
    assert watcher.probe.devices() == []
    assert summary(watcher.probe) == [("gone", "eth3", 30)]


async def test_a_veth_docker_knows_gets_the_container_labels(watcher):
    from connstats.probe.watch.containers import Container

    container = Container("c0ffee", "web-1", "nginx:1.25", 812)
    watcher._index = FakeIndex({5: (Netns(4026532000, 5, 812, ""), container)})
    await see(watcher, link(9, "veth9", nsid=5))
    assert watcher.probe.kernel.owners[9] == Owner("c0ffee", "web-1", "nginx:1.25", runtime="docker")
    [event] = watcher.probe.events
    assert (event["container_id"], event["container_name"], event["pid"], event["netns"]) == (
        "c0ffee", "web-1", 812, 4026532000)


async def test_a_device_with_no_owner_loses_stale_labels_of_its_ifindex(watcher):
    watcher.probe.kernel.owners[9] = Owner("old", "former-owner", "img")
    await see(watcher, link(9, "veth9"))
    assert 9 not in watcher.probe.kernel.owners


async def test_a_device_attached_before_the_watcher_is_adopted_not_attached_twice(watcher):
    watcher.probe.kernel.names[9] = "veth9"
    watcher.probe.kernel.attach(9)  # --iface veth9 at start
    await see(watcher, link(9, "veth9"))
    assert watcher.probe.events == [] and 9 in watcher.attached
    await see(watcher, link(9, "veth9"), gone=True)
    assert summary(watcher.probe) == [("gone", "veth9", 9)]


# -- every attached device stays true (issue 8) -------------------------------------------------


@pytest.fixture
def keeper(watcher):
    """The watcher with ``--iface eth3`` given (a name no pattern matches), listening to detaches."""
    watcher.settings = WatchSettings(watcher.settings.patterns, backoff=watcher.settings.backoff,
                                     keep=("eth3",))
    watcher.probe.detach_listeners.append(watcher._on_detached)
    return watcher


async def test_an_iface_name_is_released_when_deleted_and_attached_again_once_when_made_anew(keeper):
    keeper.probe.kernel.names[30] = "eth3"
    keeper.probe.kernel.attach(30)  # --iface eth3 at start
    await see(keeper, link(30, "eth3"))
    assert keeper.probe.events == [] and 30 in keeper.attached  # adopted, not attached twice
    await see(keeper, link(30, "eth3"), gone=True)
    assert keeper.probe.devices() == []
    await see(keeper, link(41, "eth3", up=False))  # made anew: attached even while down
    await see(keeper, link(41, "eth3", up=True))
    assert [(d.ifindex, d.name) for d in keeper.probe.devices()] == [(41, "eth3")]
    assert summary(keeper.probe) == [("gone", "eth3", 30), ("attached", "eth3", 41)]
    assert keeper.probe.events[1]["source"] == "iface"


async def test_an_iface_name_deleted_and_made_anew_under_the_same_ifindex_is_attached_again(keeper):
    await see(keeper, link(30, "eth3"))
    keeper.apply(link(30, "eth3"), gone=True)  # both before the worker runs: same key
    await see(keeper, link(30, "eth3"))
    assert summary(keeper.probe) == [("attached", "eth3", 30), ("gone", "eth3", 30), ("attached", "eth3", 30)]
    assert [d.ifindex for d in keeper.probe.devices()] == [30]


async def test_a_device_attached_by_hand_that_is_deleted_is_released_and_not_attached_again(keeper):
    keeper.probe.kernel.names[50] = "eth5"
    keeper.probe.kernel.attach(50)  # the control plane or the HTTP API
    await see(keeper, link(50, "eth5"), gone=True)
    await see(keeper, link(51, "eth5"))
    assert keeper.probe.devices() == []
    assert summary(keeper.probe) == [("gone", "eth5", 50)]


async def test_a_deletion_whose_event_was_lost_is_found_by_the_resync(keeper):
    keeper.probe.kernel.names[50] = "eth5"
    keeper.probe.kernel.attach(50)
    keeper.dump = lambda netns: {}
    await keeper.resync()
    for ifindex in sorted(keeper._dirty):
        keeper._dirty.discard(ifindex)
        await keeper.settle(ifindex, 0.0)
    assert keeper.probe.devices() == [] and summary(keeper.probe) == [("gone", "eth5", 50)]


async def test_a_kept_device_detached_by_someone_else_is_left_alone_at_once(keeper):
    await see(keeper, link(30, "eth3"))
    await keeper.probe.detach(30, "replaced")  # the filter guard, or `connstats detach eth3`
    assert 30 not in keeper.attached
    await see(keeper, link(30, "eth3"))  # any later event for it
    assert summary(keeper.probe) == [("attached", "eth3", 30), ("replaced", "eth3", 30)]
    await see(keeper, link(30, "eth3"), gone=True)
    await see(keeper, link(31, "eth3"))  # made anew: kept again
    assert [d.ifindex for d in keeper.probe.devices()] == [31]
