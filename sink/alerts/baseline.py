"""The engine's persisted baselines: one small JSON file in the state directory, mode 0600.

    <state>/alerts-baseline.json   {"version": 1, "rules": {"<rule name>": <the kind's baseline>}}

Written whole to a temporary file and renamed over the old one, so a crash leaves either
the old or the new file. A file that cannot be read is logged and ignored (the engine
learns again); one that cannot be written is logged and retried at the next save.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from connstats.probe.runtime.private import write_private

log = logging.getLogger(__name__)

BASELINE_FILE = "alerts-baseline.json"
VERSION = 1


class BaselineFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("alert baselines: cannot read %s (%s); learning again", self.path, exc)
            return {}
        rules = document.get("rules") if isinstance(document, dict) else None
        if document.get("version") != VERSION or not isinstance(rules, dict):
            log.warning("alert baselines: %s is not a version %d baseline file; learning again", self.path, VERSION)
            return {}
        return rules

    def save(self, rules: dict[str, Any]) -> bool:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            write_private(temporary, json.dumps({"version": VERSION, "rules": rules}, separators=(",", ":")))
            os.replace(temporary, self.path)
            return True
        except OSError as exc:
            log.warning("alert baselines: cannot write %s (%s); will retry", self.path, exc)
            return False
