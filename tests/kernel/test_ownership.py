"""Device ownership locks (probe/kernel/ownership.py) in a test directory: no BPF, no netlink."""
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from connstats.probe.contract.errors import ConfigError, DeviceError
from connstats.probe.kernel.ownership import DeviceLocks, DeviceOwned
from connstats.probe.watch.guard import FilterGuard

NETNS = 4026531840


def locks(tmp_path) -> DeviceLocks:
    return DeviceLocks(tmp_path / "run" / "devices", netns=NETNS)


def test_a_lock_is_a_pid_file_in_a_private_directory_and_goes_on_release(tmp_path):
    mine = locks(tmp_path)
    mine.acquire(12, "veth12")
    path = tmp_path / "run" / "devices" / f"{NETNS}-12"
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert mine.owner_of(12) == os.getpid() and mine.held() == {12}
    mine.acquire(12, "veth12")  # holding it already is fine
    mine.release(12)
    assert not path.exists() and mine.owner_of(12) is None and mine.held() == set()


def test_a_second_holder_is_refused_with_the_owners_pid_until_the_first_lets_go(tmp_path):
    first, second = locks(tmp_path), locks(tmp_path)
    first.acquire(12, "veth12")
    with pytest.raises(DeviceOwned) as refused:
        second.acquire(12, "veth12")
    assert isinstance(refused.value, DeviceError)
    assert str(refused.value) == f"veth12 is attached by the connstats probe with pid {os.getpid()}; detach it there first"
    assert (refused.value.name, refused.value.ifindex, refused.value.pid) == ("veth12", 12, os.getpid())
    assert second.owner_of(12) == os.getpid()
    second.acquire(13, "veth13")  # another device is another lock
    first.release_all()
    second.acquire(12, "veth12")
    assert second.held() == {12, 13}
    second.release_all()


HOLDER = textwrap.dedent("""
    import sys, time
    from connstats.probe.kernel.ownership import DeviceLocks
    DeviceLocks(sys.argv[1], netns=int(sys.argv[2])).acquire(12, "veth12")
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_holder_killed_with_sigkill_leaves_a_file_that_the_next_one_takes_over(tmp_path):
    directory = tmp_path / "run" / "devices"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(NETNS)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        mine = locks(tmp_path)
        assert mine.owner_of(12) == child.pid
        with pytest.raises(DeviceOwned, match=f"with pid {child.pid};"):
            mine.acquire(12, "veth12")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert (directory / f"{NETNS}-12").read_text() == f"{child.pid}\n"  # left behind, unlocked
        assert mine.owner_of(12) is None
        mine.acquire(12, "veth12")
        assert (directory / f"{NETNS}-12").read_text() == f"{os.getpid()}\n"
        mine.release(12)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_files_of_dead_owners_are_swept_when_a_probe_first_takes_a_lock(tmp_path):
    directory = tmp_path / "run" / "devices"
    live = locks(tmp_path)
    live.acquire(5, "veth5")
    for name in (f"{NETNS}-7", f"{NETNS}-8", "4026531999-7"):  # two dead owners, another netns
        (directory / name).write_text("999999\n")
    mine = locks(tmp_path)
    mine.acquire(9, "veth9")
    assert sorted(os.listdir(directory)) == sorted(["4026531999-7", f"{NETNS}-5", f"{NETNS}-9"])
    assert mine.owner_of(5) == os.getpid()
    live.release_all()
    mine.release_all()


def test_a_lock_released_while_another_waited_for_it_is_taken_anew(tmp_path, monkeypatch):
    """The releaser unlinks before it unlocks: a taker that locked the old, unlinked file
    sees that the path is not that file any more and takes the new one."""
    first, second = locks(tmp_path), locks(tmp_path)
    first.acquire(12, "veth12")
    import connstats.probe.kernel.ownership as ownership

    real_flock, calls = ownership.fcntl.flock, []

    def flock_after_release(fd, how):
        calls.append(how)
        if len(calls) == 1:
            first.release(12)  # the owner lets go between our open and our lock
        return real_flock(fd, how)

    monkeypatch.setattr(ownership.fcntl, "flock", flock_after_release)
    second.acquire(12, "veth12")
    assert len(calls) == 2  # the first lock was on the unlinked file
    assert second.owner_of(12) == os.getpid() and (tmp_path / "run" / "devices" / f"{NETNS}-12").exists()
    second.release(12)


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^cannot create the device lock directory .*; run the probe as root$"):
        DeviceLocks(tmp_path / "file" / "devices", netns=NETNS).acquire(1, "eth0")


# -- the filter guard's round, with a fake daemon -----------------------------------------------


class FakeDaemon:
    def __init__(self, losses) -> None:
        self.losses = losses

    async def check_filters(self):
        return self.losses


async def test_the_guard_warns_once_per_device_it_released(caplog):
    from connstats.probe.kernel.devices import AttachedDevice, FilterLoss, LinkInfo
    from connstats.probe.kernel.tc import TcFilter

    device = AttachedDevice(LinkInfo(12, "veth12", "veth", True), "auto", True, 1)
    loss = FilterLoss(device, {"ingress": TcFilter("bpf", 0xC57, 812, "their_prog"), "egress": None})
    assert loss.event == "replaced"
    assert FilterLoss(device, {"egress": None}).event == "lost"
    assert loss.to_wire() == {"ingress": {"kind": "bpf", "handle": 0xC57, "prog_id": 812,
                                          "prog_name": "their_prog"}, "egress": None}
    guard = FilterGuard(FakeDaemon([loss]), every=0.01)
    with caplog.at_level(logging.WARNING, logger="connstats.probe.guard"):
        assert await guard.check() == [loss]
    assert [r.getMessage() for r in caplog.records] == [
        "veth12 (ifindex 12) is no longer counted: our ingress filter was replaced by bpf program 812 "
        "(their_prog), our egress filter was removed; the filter there now is left alone (`connstats "
        "attach veth12` takes the device back)"]
    assert guard.lost == 1
