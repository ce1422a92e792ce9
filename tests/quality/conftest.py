"""The loaded quality tracepoints (compiled once per module) and the namespaces they watch."""
from __future__ import annotations

import pytest

from tests.fixtures.linked import linked_namespaces  # noqa: F401
from tests.fixtures.netns import require_root


@pytest.fixture(scope="module")
def quality():
    """The tracepoints, loaded; each test watches only its own namespaces (new inodes)."""
    require_root()
    from connstats.probe.quality.quality import QualityTracepoints

    tracepoints = QualityTracepoints.start()
    try:
        yield tracepoints
    finally:
        tracepoints.close()
