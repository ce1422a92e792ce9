"""Fixtures shared by every test tier; each family lives in tests/fixtures/."""
from tests.fixtures.netns import *  # noqa: F401,F403
from tests.fixtures.probe import *  # noqa: F401,F403
from tests.fixtures.nats import *  # noqa: F401,F403
from tests.fixtures.influx import *  # noqa: F401,F403
from tests.fixtures.docker import *  # noqa: F401,F403
from tests.fixtures.secure_nats import *  # noqa: F401,F403
from tests.fixtures.browser import *  # noqa: F401,F403
