"""tests/fixtures/wait.py's options: what each wait of the suite relies on."""
from __future__ import annotations

import itertools

import pytest

from tests.fixtures.wait import until, until_async


def test_accept_judges_the_value_and_fail_false_returns_the_last():
    reads = itertools.count()
    assert until(lambda: next(reads), 1, step=0.001, accept=lambda n: n == 3) == 3
    assert until(lambda: (0, 7), 0.05, step=0.01, fail=False, accept=lambda t: t[0] == 1) == (0, 7)


def test_retry_on_waits_through_the_errors_and_names_the_last():
    attempts = itertools.count()

    def flaky() -> str:
        if next(attempts) < 2:
            raise ConnectionError("not yet")
        return "up"

    assert until(flaky, 1, step=0.001, retry_on=(ConnectionError,)) == "up"
    with pytest.raises(pytest.fail.Exception, match=r"no answer within 0.05 s; last error: ConnectionError\('down'\); "
                                                    r"seen 3"):
        until(lambda: (_ for _ in ()).throw(ConnectionError("down")), 0.05, "answer", step=0.01,
              retry_on=(ConnectionError,), detail=lambda: "seen 3")
    with pytest.raises(ValueError):  # not in retry_on: ends the wait at once
        until(lambda: int("x"), 5, retry_on=(ConnectionError,))


async def test_a_condition_fails_early_through_any_retry_on():
    def exited() -> bool:
        pytest.fail("exited with 1")

    with pytest.raises(pytest.fail.Exception, match="exited with 1"):
        await until_async(exited, 5, retry_on=(Exception,))

    async def answer() -> list:
        return [1]

    assert await until_async(answer, 1) == [1]
