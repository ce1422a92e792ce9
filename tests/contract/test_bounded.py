"""Issue 18: JSON and TOML from outside are bounded in size and nesting before a decoder
recurses (probe/contract/bounded.py), and every loader says so in one line."""
from __future__ import annotations

import json

import pytest

from connstats.cli.config import load_config
from connstats.probe.contract import ConfigError, MessageError, decode_event
from connstats.probe.contract.bounded import check_json, document_depth, json_depth, loads_toml, toml_depth
from connstats.probe.contract.errors import PolicyError
from connstats.probe.contract.policy_file import parse_policy
from connstats.sink.alerts.rules import RuleError, load_rules

DEEP = "nested 1000 deep, deeper than the 32 levels of arrays and objects allowed; send flatter data"
NESTED_JSON = b'{"a":' * 1000 + b"1" + b"}" * 1000
NESTED_TOML = "a = " + "[" * 1000 + "]" * 1000 + "\n"


@pytest.mark.parametrize("text, depth", [
    (b"", 0), (b"1", 0), (b"[]", 1), (b"[[], {}]", 2), (b'{"a": [{"b": [1]}]}', 4),
    (b'{"a": "[[[[{{{{"}', 1),  # brackets in strings do not count
    (b'{"a": "\\"[[[[", "b": [[1]]}', 3),  # nor after an escaped quote
    (b'{"a": "x\\\\", "b": [[1]]}', 3),  # an escaped backslash ends nothing
    (b'["\\\\\\"[[[["]', 1),
    (NESTED_JSON, 1000),
])
def test_json_depth(text, depth):
    assert json_depth(text) == depth
    if depth < 100:  # json.loads recurses too
        assert json_depth(text) == _reference_depth(text)


def _reference_depth(text: bytes) -> int:
    """The depth of what ``json.loads`` builds (strings count nothing), for texts it can read."""
    def depth(value) -> int:
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0
    return depth(json.loads(text)) if text else 0


@pytest.mark.parametrize("text, depth", [
    ("", 0), ("a = 1\n", 0), ("[t]\na = [1, [2]]\n", 2), ("[[rule]]\nx = {y = {z = 1}}\n", 2),
    ('a = "[[[[" # [[[[\nb = \'[[[\'\n', 0),  # strings and comments do not count
    ('a = """\n[[[\n"""\nb = \'\'\'[[[\'\'\'\n', 0),
    ('a = "\\"[[[["\n', 0),
    (NESTED_TOML, 1000),
    # a multi-line string's own closing quotes end it, not a string begun by the last of them
    ('a = """x""""\n' + NESTED_TOML + 'c = "y"\n', 1000),
    ("a = '''x'''''\n" + NESTED_TOML + "c = 'y'\n", 1000),
])
def test_toml_depth(text, depth):
    assert toml_depth(text) == depth


def test_document_depth():
    assert [document_depth(v) for v in (1, {}, [], {"a": [1, {"b": {}}]}, [[[]]])] == [0, 1, 1, 4, 3]
    deep: dict = {}
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = {"a": deep}
    assert document_depth(deep) == 5001


def test_bounds_raise_one_line():
    with pytest.raises(MessageError) as caught:
        check_json(NESTED_JSON)
    assert str(caught.value) == DEEP
    with pytest.raises(MessageError) as caught:
        check_json(b"[1]" * 10, max_bytes=29)
    assert str(caught.value) == "30 bytes, more than the 29 allowed; send less"
    check_json(b'{"a": [[[1]]]}', max_bytes=14)
    with pytest.raises(MessageError) as caught:
        loads_toml(NESTED_TOML)
    assert str(caught.value) == DEEP
    assert loads_toml("a = [[1]]\n") == {"a": [[1]]}


def test_an_event_nested_1000_deep_is_a_message_error():
    with pytest.raises(MessageError) as caught:
        decode_event(NESTED_JSON)
    assert str(caught.value) == DEEP
    with pytest.raises(MessageError) as caught:
        decode_event(b"{")
    assert str(caught.value) == "not an event: Input data was truncated"


DOTTED = "[groups]\nweb." + ".".join(["a"] * 999) + " = 1\n"  # tomllib does not recurse on it: 1,001 tables
DOTTED_DEEP = DEEP.replace("1000", "1001")


@pytest.mark.parametrize("text, deep", [(NESTED_TOML, DEEP), (DOTTED, DOTTED_DEEP)])
def test_every_toml_loader_refuses_1000_levels_in_one_line(tmp_path, text, deep):
    """Brackets 1,000 deep were a RecursionError in tomllib; dotted keys 1,000 deep one in
    the first ``repr`` of the value (a rule's error message)."""
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "web.toml")
    assert str(caught.value) == f"web.toml: {deep}"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"config file {path}: {deep}"
    rules = tmp_path / "rules.toml"  # [[rule]] ... cap.a.a...a = 1: a list, a table, then the same 1,000
    rules.write_text('[[rule]]\nname = "r"\nkind = "threshold"\nmetric = "packets"\nwindow = "30s"\nabove = 5\n'
                     + text.replace("[groups]\nweb.", "cap."))
    with pytest.raises(RuleError) as caught:
        load_rules(rules)
    assert str(caught.value) == f"{rules}: {deep.replace('1001', '1002')}"
