"""Fixtures shared by every test tier; each family lives in tests/fixtures/.

Also, once per run (in the process that starts it, not in each pytest-xdist worker):
the run's number for test-made names, the markers that say which real parts a test needs,
and the check that the run left no namespace, link or tc filter behind.
"""
import os

import pytest

from tests.fixtures.alerts import flows  # noqa: F401
from tests.fixtures.browser import *  # noqa: F401,F403
from tests.fixtures.cli import *  # noqa: F401,F403
from tests.fixtures.containerd import containerd  # noqa: F401
from tests.fixtures.control import auth_nats  # noqa: F401
from tests.fixtures.docker import *  # noqa: F401,F403
from tests.fixtures.influx import *  # noqa: F401,F403
from tests.fixtures.nats import *  # noqa: F401,F403
from tests.fixtures.nats_cluster import nats_cluster  # noqa: F401
from tests.fixtures.netns import *  # noqa: F401,F403
from tests.fixtures.netns import RUN_ENV, leftovers
from tests.fixtures.podman import podman_host  # noqa: F401
from tests.fixtures.probe import *  # noqa: F401,F403
from tests.fixtures.processes import named_programs, veth_netns  # noqa: F401
from tests.fixtures.routed import routed_namespaces  # noqa: F401
from tests.fixtures.secure_nats import *  # noqa: F401,F403
from tests.fixtures.tmpfs import *  # noqa: F401,F403

# A test that asks for one of these fixtures needs that real part: `make test-unit` (and
# `pytest -m "not kernel and not nats and not docker and not podman and not browser"`) runs the others.
PARTS = {
    "kernel": {"classifier", "probe", "tiny_probe", "test_network", "quiet_network", "containerd",
               "routed_namespaces", "pair_network", "veth_netns"},
    "nats": {"nats_server", "nats_server_factory", "nats_cluster", "secure_nats_factory", "role_nats"},
    "docker": {"dockerd"},
    "podman": {"podman_host"},
    "browser": {"browser_page", "strict_browser_page"},
}
_BEFORE = pytest.StashKey[set]()  # what was there before the run (another run's, or a kept probe's)


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller(config):
        os.environ.setdefault(RUN_ENV, f"{os.getpid() % 1000:03d}")  # the workers inherit it


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker, fixtures in PARTS.items():
            if fixtures & set(getattr(item, "fixturenames", ())):
                item.add_marker(marker)
        if item.get_closest_marker("docker"):  # one dockerd at a time: one worker runs them all
            item.add_marker(pytest.mark.xdist_group("docker"))
        if item.get_closest_marker("podman"):  # they share podman's files outside their own dirs
            item.add_marker(pytest.mark.xdist_group("podman"))


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session.config) and os.geteuid() == 0:
        session.config.stash[_BEFORE] = set(leftovers())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fails the run if its tests left namespaces, links or connstats tc filters behind."""
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    left = [item for item in leftovers() if item not in before]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"tests left behind: {left}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

