"""The probe's policy service behind fakes of its port (no kernel, no NATS): the verbs, the
policy kept in the state directory and applied again at start, re-resolution as devices come
and go, and requests that must fail as one error."""
from __future__ import annotations

import asyncio
import json
import stat
from dataclasses import dataclass, field

import pytest

from connstats.probe.contract.errors import ConfigError, NotApplied, PolicyError
from connstats.probe.policy.service import PolicyService

POLICY = '[groups]\nweb = { ifaces = ["veth-web*"] }\n[[allow]]\nfrom = "web"\nto = "world"\nproto = "tcp"\nports = [443]\n'


@dataclass
class Link:
    peer_nsid: int | None = None


@dataclass
class Device:
    ifindex: int
    name: str
    link: Link = field(default_factory=Link)


class FakeTables:
    def __init__(self) -> None:
        self.installed: list[tuple[dict, str]] = []
        self.offs = 0

    def install(self, resolved, mode: str, job=None) -> int:
        if job is not None:
            job.check()
        self.installed.append((dict(resolved.devices), mode))
        return len(self.installed)

    def off(self) -> int:
        self.offs += 1
        return 0


class FakeProbe:
    def __init__(self, *devices: Device) -> None:
        self.attached = list(devices)
        self.tables = FakeTables()
        self.listeners = []

    def devices(self):
        return list(self.attached)

    def policy_tables(self):
        return self.tables

    def on_interval(self, listener) -> None:
        self.listeners.append(listener)


class QuietViolations:
    published = failed = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def interval(self, batch, resolved, mode) -> None: ...


@dataclass(frozen=True)
class Pod:
    """What the resolver reads of a watch.containers.Container."""

    name: str = "shop_web"
    image: str = "pause"
    pod: str = ""
    pod_labels: tuple[tuple[str, str], ...] = ()


class FakeContainers:
    """The ContainerIndex's owner look-up: peer nsid -> (no netns, the container behind it)."""

    def __init__(self) -> None:
        self.by_nsid: dict[int, Pod] = {}

    def owner(self, peer_nsid):
        return None, self.by_nsid.get(peer_nsid)


def service(tmp_path, probe: FakeProbe, containers=None) -> PolicyService:
    return PolicyService(QuietViolations(), tmp_path, containers=containers, recheck_seconds=3600).bind(probe)


def test_apply_show_off_and_the_state_file(tmp_path):
    probe = FakeProbe(Device(7, "veth-web1"), Device(8, "veth-db"))

    async def run():
        policy = service(tmp_path, probe)
        await policy.start()
        try:
            applied = await policy.apply_verb({"text": POLICY, "mode": "monitor"})
            assert applied == {"mode": "monitor", "groups": 1, "rules": 1,
                               "governed": [{"ifname": "veth-web1", "ifindex": 7, "groups": ["web"]}]}
            saved = tmp_path / "policy.json"
            assert stat.S_IMODE(saved.stat().st_mode) == 0o600
            assert json.loads(saved.read_text()) == {"mode": "monitor", "text": POLICY}
            assert (await policy.show_verb({}))["text"] == POLICY
            assert (await policy.off_verb({}))["mode"] == "off" and not saved.exists()
            return probe.tables.installed, probe.tables.offs
        finally:
            await policy.close()

    assert asyncio.run(run()) == ([({7: 1 << 2}, "monitor")], 1)


def test_the_saved_policy_is_applied_again_at_start_and_a_new_device_is_governed(tmp_path):
    (tmp_path / "policy.json").write_text(json.dumps({"mode": "protect", "text": POLICY}))
    probe = FakeProbe(Device(7, "veth-web1"))

    async def run():
        policy = service(tmp_path, probe)
        await policy.start()
        try:
            assert await policy.recheck() is False  # nothing changed
            probe.attached.append(Device(9, "veth-web2"))  # a container came
            assert await policy.recheck() is True
            probe.attached.append(Device(10, "veth-other"))  # not selected: the tables stay
            assert await policy.recheck() is False
        finally:
            await policy.close()

    asyncio.run(run())
    assert probe.tables.installed == [({7: 4}, "protect"), ({7: 4, 9: 4}, "protect")]


def test_a_pod_that_comes_changes_its_labels_and_goes_is_resolved_again(tmp_path):
    text = '[groups]\nweb = { k8s_namespaces = ["shop"], labels = { app = "web" } }\n'
    containers = FakeContainers()
    probe = FakeProbe(Device(7, "veth-a", Link(peer_nsid=1)), Device(8, "veth-b", Link(peer_nsid=2)))

    async def run():
        policy = service(tmp_path, probe, containers)
        await policy.apply_verb({"text": text, "mode": "protect"})
        steps = []
        for change in (lambda: containers.by_nsid.update({1: Pod(pod="shop/web-1", pod_labels=(("app", "web"),))}),
                       lambda: containers.by_nsid.update({2: Pod(pod="shop/db-0", pod_labels=(("app", "db"),))}),
                       lambda: containers.by_nsid.update({2: Pod(pod="shop/db-0", pod_labels=(("app", "web"),))}),
                       lambda: containers.by_nsid.pop(1)):
            change()
            steps.append(await policy.recheck())
        return steps

    assert asyncio.run(run()) == [True, False, True, True]  # a db pod in shop is not web: the tables stay
    assert probe.tables.installed == [({}, "protect"), ({7: 4}, "protect"), ({7: 4, 8: 4}, "protect"),
                                      ({8: 4}, "protect")]


@pytest.mark.parametrize("saved", ['{"mode": "protect"', '{"mode": "wild", "text": ""}',
                                   json.dumps({"mode": "protect", "text": "[groups]\nhost = { cidrs = [] }\n"})])
def test_a_broken_saved_policy_enforces_none_and_the_probe_runs_on(tmp_path, saved):
    (tmp_path / "policy.json").write_text(saved)
    probe = FakeProbe(Device(7, "veth-web1"))

    async def run():
        policy = service(tmp_path, probe)
        await policy.start()
        await policy.close()
        return policy.mode

    assert asyncio.run(run()) == "off" and probe.tables.installed == []


@pytest.mark.parametrize("body,error,message", [
    ({"mode": "protect"}, ConfigError, "the request lacks the policy text ('text')"),
    ({"text": 5, "mode": "protect"}, ConfigError, "the request lacks the policy text ('text')"),
    ({"text": POLICY, "mode": "enforce"}, ConfigError, "mode 'enforce' is not monitor or protect"),
    ({"text": POLICY, "mode": "off"}, ConfigError, "mode 'off' is not monitor or protect"),
    ({"text": "[groups\n", "mode": "monitor", "source": "p.toml"}, PolicyError,
     "p.toml: not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 8)); fix the syntax"),
    ({"text": POLICY, "mode": "monitor", "within_ms": 9000, "deadline_ms": 1_000_000_000_000}, NotApplied,
     None),  # the message names how late it came: checked below
    ({"text": POLICY, "mode": "monitor", "within_ms": "9 s"}, ConfigError,
     "'within_ms' must be a whole number of milliseconds"),
])
def test_bad_requests_are_one_error_and_change_nothing(tmp_path, body, error, message):
    probe = FakeProbe(Device(7, "veth-web1"))

    async def run():
        policy = service(tmp_path, probe)
        with pytest.raises(error) as caught:
            await policy.apply_verb(body)
        return str(caught.value)

    said = asyncio.run(run())
    if message is None:  # sent in 2001 (deadline_ms 10^12): refused, however long ago that is now
        late = float(said.split(" came ")[1].split(" s ")[0])
        message = (f"the policy was not applied: the request came {late:.1f} s after its deadline; nothing changed; "
                   "check that the probe is not overloaded and that the clocks of the sender and the probe agree")
        assert late > 7e8
    assert said == message
    assert probe.tables.installed == [] and not (tmp_path / "policy.json").exists()


def test_an_off_supersedes_an_apply_that_waits(tmp_path):
    """An apply that waits (here: behind a recheck holding the service) and an off that comes
    after it: the apply never takes effect, the off does."""
    probe = FakeProbe(Device(7, "veth-web1"))

    async def run():
        policy = service(tmp_path, probe)
        async with policy._lock:  # busy, as with a long install
            waiting = asyncio.create_task(policy.apply_verb({"text": POLICY, "mode": "protect", "within_ms": 9000}))
            await asyncio.sleep(0.01)  # it has come in and waits
            off = asyncio.create_task(policy.off_verb({}))
            await asyncio.sleep(0)
        return await asyncio.gather(waiting, off, return_exceptions=True)

    applied, off = asyncio.run(run())
    assert isinstance(applied, NotApplied) and off["mode"] == "off"
    assert probe.tables.installed == [] and probe.tables.offs == 1


def test_the_report_for_the_self_metrics_counts_failed_applies(tmp_path):
    probe = FakeProbe(Device(7, "veth-web1"), Device(8, "veth-db"))

    async def run():
        policy = service(tmp_path, probe)
        reports = [policy.report()]
        await policy.apply_verb({"text": POLICY, "mode": "protect"})
        reports.append(policy.report())
        for body in ({"text": POLICY, "mode": "enforce"}, {"text": "[groups\n", "mode": "monitor"}):
            with pytest.raises((ConfigError, PolicyError)):
                await policy.apply_verb(body)
        reports.append(policy.report())
        await policy.off_verb({})
        reports.append(policy.report())
        return reports

    off, applied, refused, removed = asyncio.run(run())
    assert (off.mode, off.rules, off.groups, off.governed_devices, off.apply_failures) == ("off", 0, 0, 0, 0)
    assert (applied.mode, applied.rules, applied.groups, applied.governed_devices) == ("protect", 1, 1, 1)
    assert (refused.mode, refused.apply_failures) == ("protect", 2)  # the policy in force stays
    assert (removed.mode, removed.rules, removed.governed_devices, removed.apply_failures) == ("off", 0, 0, 2)
