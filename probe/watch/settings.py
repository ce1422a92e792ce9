"""What the link watcher attaches: names matching an ``--auto`` glob and no ``--exclude``
glob (``LinkPatterns``), the ``--iface`` names it keeps attached, its resync period and
retry backoff (``WatchSettings``).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from ..contract.errors import ConfigError
from ..runtime.backoff import Backoff
from .link_monitor import LinkState

DEFAULT_EXCLUDE = ("lo",)


@dataclass(frozen=True)
class LinkPatterns:
    """Which devices to attach: names matching an ``auto`` glob and no ``exclude`` glob."""

    auto: tuple[str, ...]
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self) -> None:
        for pattern in (*self.auto, *self.exclude):
            if not pattern or "/" in pattern:
                raise ConfigError(f"device pattern {pattern!r} is not a name glob; use e.g. 'veth*'")

    def matches(self, name: str) -> bool:
        return (any(fnmatch.fnmatchcase(name, p) for p in self.auto)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))


@dataclass
class WatchSettings:
    patterns: LinkPatterns
    resync_seconds: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    keep: tuple[str, ...] = ()  # --iface names: attached whenever a device has one, up or not

    def wants(self, link: "LinkState") -> bool:
        return link.name in self.keep or (link.up and self.patterns.matches(link.name))

    def wants_name(self, name: str) -> bool:
        """Whether an attached device under this name stays attached (down or not)."""
        return name in self.keep or self.patterns.matches(name)

    def source(self, name: str) -> str:
        return "iface" if name in self.keep else "auto"

