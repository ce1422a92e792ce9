"""The one duration parser (probe/runtime/durations.py): what it reads, exactly, and the
one-line errors that say what to write instead."""
from __future__ import annotations

import pytest

from connstats.probe.contract.errors import ConfigError
from connstats.probe.runtime.durations import (
    MAX_DURATION,
    duration_seconds,
    duration_value,
    is_duration,
    parse_duration,
)

S = 1_000_000_000


@pytest.mark.parametrize("text, ns", [
    ("30s", 30 * S), ("15m", 900 * S), ("2h", 7200 * S), ("1d", 86400 * S), ("2d", 172800 * S), ("1w", 7 * 86400 * S),
    ("1h30m", 5400 * S), ("1m1m", 120 * S), ("0.5s", S // 2), ("1.5ns", 1), ("250ms", S // 4), ("7us", 7000),
    ("0s", 0), (" 15m\n", 900 * S), ("0.000000001s", 1), ("10428w", 10428 * 7 * 86400 * S),
    ("73000d", MAX_DURATION),
])
def test_what_it_reads(text, ns):
    assert parse_duration(text) == ns
    assert is_duration(text)


@pytest.mark.parametrize("text", ["", " ", "15", "m", "15M", "1h 30m", "-5m", "+5m", "1.s", ".5s", "5 s", "1y",
                                  "1e3s", "٣s", "15m!", "now"])
def test_what_it_refuses(text):
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"{text.strip()!r} is not a duration; use e.g. 30s, 15m, 2h, 1d"
    assert not is_duration(text)


def test_a_long_bad_text_is_cut_in_the_error():
    with pytest.raises(ConfigError) as caught:
        parse_duration("x" * 5000)
    assert str(caught.value) == f"{'x' * 40!r}... is not a duration; use e.g. 30s, 15m, 2h, 1d"


def test_a_newline_stays_escaped_on_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_duration("5m\nrm -rf")
    assert str(caught.value) == "'5m\\nrm -rf' is not a duration; use e.g. 30s, 15m, 2h, 1d"


@pytest.mark.parametrize("text, message", [
    ("73000d1ns", "'73000d1ns' is longer than 200 years; use a shorter duration"),
    ("10429w", "'10429w' is longer than 200 years; use a shorter duration"),
    ("1" + "0" * 45 + "s", f"{'1' + '0' * 39!r}... is longer than 200 years; use a shorter duration"),
])
def test_more_than_200_years_is_refused(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


def test_positive_refuses_no_time_at_all():
    assert parse_duration("1ns", positive=True) == 1
    for text in ("0s", "0.0h", "0.1ns"):
        with pytest.raises(ConfigError) as caught:
            parse_duration(text, positive=True)
        assert str(caught.value) == f"{text!r} is no time at all; use a duration above 0, e.g. \"30s\""


@pytest.mark.parametrize("value, message", [
    (30, '30 is not a duration; write it as text, e.g. "30s"'),
    (1.5, '1.5 is not a duration; write it as text, e.g. "30s"'),
    (True, 'True is not a duration; write it as text, e.g. "30s"'),
    (None, 'None is not a duration; write it as text, e.g. "30s"'),
    (["30s"], "['30s'] is not a duration; write it as text, e.g. \"30s\""),
    ("30", "'30' is not a duration; use e.g. 30s, 15m, 2h, 1d"),
])
def test_a_settings_files_value_must_be_text_with_a_unit(value, message):
    with pytest.raises(ConfigError) as caught:
        duration_value(value)
    assert str(caught.value) == message


def test_a_settings_files_value_and_seconds():
    assert duration_value("1m30s") == 90 * S
    assert duration_value("1ms", positive=True) == 1_000_000
    assert duration_seconds("7d") == 604800.0
    assert duration_seconds("1.5s") == 1.5
    assert duration_seconds("1ns") == 1e-9
