"""The probe's policy service: the active policy, kept, applied, re-resolved, reported.

    connstats policy apply FILE ─> ctl verb policy_apply {text, mode, deadline_ms, within_ms}
        an ApplyJob (job.py): supersedes the apply before it, stops at its deadline ─
        parse (PolicyError names line and key) ─ resolve against the attached devices ─
        PolicyTables.install (build the spare set, flip one word) ─ save <state>/policy.json
        (parse, resolve and install run in a worker thread: intervals and the control
        plane keep their pace while a large policy compiles)
    start:  the saved policy applied again (a restart keeps enforcing what was applied)
    every second: the attached devices and who is behind them; when that changed, resolve
        and install again (containers and devices that come and go)
    every interval: denied connections -> violation events (violations.py), through
        ``publish_violations``, which ``build_probe`` subscribes to the probe
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal

from ..contract.errors import ConfigError, NotApplied, PolicyError
from ..contract.flow_batch import FlowBatch
from ..contract.policy_file import Policy, parse_policy
from ..kernel.devices import AttachedDevice
from ..runtime.private import write_private
from ..seams import PolicyReport, ProbePort
from ..watch.containers import Container, ContainerIndex, Netns
from .job import ApplyJob
from .resolve import Address, Resolved, addresses_in, endpoints_of, resolve
from .tables import MODES
from .violations import EnforcingMode, ViolationPublisher

log = logging.getLogger("connstats.probe.policy")

STATE_FILE = "policy.json"
ENFORCING = ("monitor", "protect")
Mode = Literal["off", "monitor", "protect"]  # tables.MODES
JsonObject = dict[str, Any]  # a request's or a reply's body: any JSON values
Handler = Callable[[JsonObject], Awaitable[JsonObject]]
Signature = tuple[tuple[int, str, int | None, Container | None], ...]


class PolicyService:
    """A probe ``Service``; ``bind`` gives it the probe, ``verbs`` go to the control plane."""

    def __init__(self, violations: ViolationPublisher, state_dir: Path | None,
                 containers: ContainerIndex | None = None, recheck_seconds: float = 1.0) -> None:
        self.violations = violations
        self.state_file = state_dir / STATE_FILE if state_dir is not None else None
        self.containers = containers
        self.recheck_seconds = recheck_seconds
        self.probe: ProbePort | None = None
        self.policy: Policy | None = None
        self.mode: Mode = "off"
        self.resolved: Resolved | None = None
        self._seen: Signature = ()
        self._addresses: dict[int, tuple[Address, ...]] = {}  # netns inode -> its addresses
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._newest: ApplyJob | None = None  # the last apply or off that came in
        self.apply_failures = 0

    def bind(self, probe: ProbePort) -> PolicyService:
        self.probe = probe
        return self

    @property
    def _probe(self) -> ProbePort:
        """The probe ``bind`` gave, which every verb, apply and recheck asks."""
        if self.probe is None:
            raise RuntimeError("the policy service is not bound to a probe (PolicyService.bind)")
        return self.probe

    @property
    def verbs(self) -> dict[str, Handler]:
        return {"policy_apply": self.apply_verb, "policy_show": self.show_verb, "policy_off": self.off_verb}

    async def start(self) -> None:
        await self.violations.start()
        saved = self._load()
        if saved is not None:
            try:
                await self.apply(parse_policy(saved["text"], "the saved policy"), saved["mode"])
                log.info("policy re-applied from %s (%s)", self.state_file, self.mode)
            except PolicyError as exc:
                self.apply_failures += 1
                log.error("the saved policy %s is not valid any more (%s); enforcing none", self.state_file, exc)
        self._task = asyncio.create_task(self._recheck_forever(), name="policy-recheck")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.violations.close()

    # -- the verbs ------------------------------------------------------------------------

    async def apply_verb(self, body: JsonObject) -> JsonObject:
        try:
            return await self._apply_verb(body)
        except Exception:
            self.apply_failures += 1
            raise

    async def _apply_verb(self, body: JsonObject) -> JsonObject:
        job = self._arrived(_job_of(body))  # first: it supersedes whatever came before it
        text = body.get("text")
        if not isinstance(text, str):
            raise ConfigError("the request lacks the policy text ('text')")
        mode = _enforcing(body.get("mode"))
        policy = await asyncio.to_thread(parse_policy, text, str(body.get("source") or "policy"))
        await self.apply(policy, mode, job)
        self._save()
        return self.summary()

    def _arrived(self, job: ApplyJob) -> ApplyJob:
        """``job`` is now the newest request: the one before it never takes effect."""
        if self._newest is not None:
            self._newest.supersede()
        self._newest = job
        return job

    async def show_verb(self, body: JsonObject) -> JsonObject:
        return self.summary() | {"text": self.policy.text if self.policy else ""}

    async def off_verb(self, body: JsonObject) -> JsonObject:
        self._arrived(ApplyJob())
        async with self._lock:
            await asyncio.to_thread(self._probe.policy_tables().off)
            self.policy, self.resolved, self.mode = None, None, "off"
        self._save()
        log.info("policy removed")
        return self.summary()

    def summary(self) -> JsonObject:
        governed: list[JsonObject] = []
        if self.resolved is not None:
            names = {d.ifindex: d.name for d in self._probe.devices()}
            governed = [{"ifname": names.get(i, str(i)), "ifindex": i, "groups": self.resolved.names(mask)}
                        for i, mask in sorted(self.resolved.devices.items())]
        return {"mode": self.mode, "groups": len(self.policy.groups) if self.policy else 0,
                "rules": len(self.policy.rules) if self.policy else 0, "governed": governed}

    def report(self) -> PolicyReport:
        """For the self-metrics, at scrape time: what is kept here anyway."""
        policy = self.policy
        return PolicyReport(mode=self.mode, rules=len(policy.rules) if policy else 0,
                            groups=len(policy.groups) if policy else 0,
                            governed_devices=len(self.resolved.devices) if self.resolved is not None else 0,
                            violation_events=self.violations.published,
                            violation_events_failed=self.violations.failed, apply_failures=self.apply_failures)

    # -- applying -------------------------------------------------------------------------

    async def apply(self, policy: Policy, mode: EnforcingMode, job: ApplyJob | None = None) -> None:
        """Make ``policy`` the one in force, or raise ``NotApplied`` when ``job`` stops first."""
        job = job if job is not None else self._arrived(ApplyJob())
        async with self._lock:
            job.check()  # it may have waited for the one before it
            self._seen = ()  # resolve from scratch: addresses may have changed too
            self._addresses.clear()
            resolved = await asyncio.to_thread(self._resolve, policy)
            await asyncio.to_thread(self._probe.policy_tables().install, resolved, mode, job)
            self.policy, self.resolved, self.mode = policy, resolved, mode
        log.info("policy applied: %s, %d groups, %d rules, %d governed devices", mode,
                 len(policy.groups), len(policy.rules), len(resolved.devices))

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_seconds)
            try:
                await self.recheck()
            except Exception:  # a failed recheck must not end enforcement
                log.exception("re-resolving the policy failed; trying again")

    async def recheck(self) -> bool:
        """Resolve again if the devices or who is behind them changed; True if installed."""
        async with self._lock:
            if self.policy is None or await asyncio.to_thread(self._signature) == self._seen:
                return False
            resolved = await asyncio.to_thread(self._resolve, self.policy)
            if self.resolved is not None and (resolved.devices, resolved.prefixes) == (
                    self.resolved.devices, self.resolved.prefixes):
                return False
            await asyncio.to_thread(self._probe.policy_tables().install, resolved, self.mode)
            self.resolved = resolved
        log.info("policy re-resolved: %d governed devices", len(resolved.devices))
        return True

    def _signature(self) -> Signature:
        """The attached devices and who is behind them (resolver lookups are cached)."""
        return tuple(sorted((d.ifindex, d.name, d.link.peer_nsid, self._owner(d)[1])
                            for d in self._probe.devices()))

    def _owner(self, device: AttachedDevice) -> tuple[Netns | None, Container | None]:
        if self.containers is None or device.link.peer_nsid is None:
            return None, None
        return self.containers.owner(device.link.peer_nsid)

    def _resolve(self, policy: Policy) -> Resolved:
        self._seen = self._signature()
        return resolve(policy, endpoints_of(self._probe.devices(), self.containers, self._addresses),
                       addresses_in(None))

    # -- what survives a restart ----------------------------------------------------------

    def _save(self) -> None:
        if self.state_file is None:
            return
        if self.policy is None:
            self.state_file.unlink(missing_ok=True)
            return
        write_private(self.state_file, json.dumps({"mode": self.mode, "text": self.policy.text}) + "\n")

    def _load(self) -> JsonObject | None:
        if self.state_file is None:
            return None
        try:
            saved = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("cannot read the saved policy %s (%s); enforcing none", self.state_file, exc)
            return None
        if not isinstance(saved, dict) or saved.get("mode") not in ENFORCING or not isinstance(saved.get("text"), str):
            log.error("the saved policy %s is not one connstats wrote; enforcing none", self.state_file)
            return None
        return saved

    def publish_violations(self, batch: FlowBatch) -> None:
        """An interval listener: the interval's denied connections as violation events,
        while a policy is applied (nothing before ``start``)."""
        if self.resolved is not None and self.mode != "off":  # a policy applied: both set together
            self.violations.interval(batch, self.resolved, self.mode)


def _enforcing(mode: object) -> EnforcingMode:
    """A request's ``mode``, which must be one that enforces."""
    if mode == "monitor":
        return "monitor"
    if mode == "protect":
        return "protect"
    raise ConfigError(f"mode {mode!r} is not monitor or protect")


def _job_of(body: JsonObject) -> ApplyJob:
    """The request's time: ``within_ms`` from now, and no later than ``deadline_ms`` (unix
    time by the sender's clock: a request that sat in a queue is refused)."""
    within, deadline = body.get("within_ms"), body.get("deadline_ms")
    for key, value in (("within_ms", within), ("deadline_ms", deadline)):
        if value is not None and type(value) is not int:
            raise ConfigError(f"{key!r} must be a whole number of milliseconds")
    if deadline is not None:
        left = deadline - time.time() * 1000
        if left <= 0:
            raise NotApplied(f"the policy was not applied: the request came {-left / 1000:.1f} s after its "
                             "deadline; nothing changed; check that the probe is not overloaded and that the "
                             "clocks of the sender and the probe agree")
        within = left if within is None else min(within, left)
    return ApplyJob.within(None if within is None else within / 1000)


assert MODES[1:] == ENFORCING
