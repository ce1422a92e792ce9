"""Bounds on JSON and TOML from outside, checked before a decoder sees the text.

A decoder recurses once per nested array or object: ``{"a":{"a":...}}`` 1,000 deep is a
``RecursionError`` in msgspec, the stdlib ``json`` and ``tomllib`` alike. Every place that
decodes what another process, a request or a file sent calls one of these first:

- ``check_json(data, max_bytes)``: the size, then the deepest nesting of arrays and objects
  (brackets inside strings do not count), scanned with ``bytes.translate`` and numpy;
- ``loads_toml(text, max_bytes)``: the same for TOML (inline tables, arrays, table headers;
  brackets in strings and comments do not count), then ``tomllib.loads``, then the depth of
  what it made (dotted keys nest too).

Both raise ``MessageError`` saying what is wrong and what to send instead; each caller says it
in its own way (a dead letter, a 400, a control error, a ``ConfigError``).
"""
from __future__ import annotations

import re
import tomllib
from typing import Any

import numpy as np

from .errors import MessageError

MAX_DEPTH = 32  # flow messages nest 4 deep, events 3, policies and rules 4
MAX_TOML_BYTES = 1024 * 1024  # a rules, policy or config file
_STEP = np.zeros(256, np.int8)  # +1 opens, -1 closes
_STEP[[ord("{"), ord("[")]] = 1
_STEP[[ord("}"), ord("]")]] = -1
_QUOTE = 2
_kinds = bytearray(_STEP.view(np.uint8).tobytes())  # byte -> its kind, for bytes.translate
_kinds[ord('"')] = _QUOTE
_KINDS = bytes(_kinds)


def check_json(data: bytes, max_bytes: int | None = None, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``MessageError`` if ``data`` is longer than ``max_bytes`` or nests deeper than
    ``max_depth``; the decoder then never recurses past it."""
    _check_size(len(data), max_bytes)
    _check_depth(json_depth(data), max_depth)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, brackets in strings not counted."""
    if b"\\" in data:
        return _json_depth_escaped(data)
    kinds = np.frombuffer(data.translate(_KINDS), np.int8)
    kinds = kinds[np.flatnonzero(kinds != 0)]  # brackets and quotes only, in order
    in_string = (np.cumsum(kinds == _QUOTE, dtype=np.int32) & 1).astype(bool)
    step = np.where(kinds == _QUOTE, 0, kinds)
    step[in_string] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _json_depth_escaped(data: bytes) -> int:
    """``json_depth`` for text with backslashes: every byte looked at (~10 ms per MB)."""
    text = np.frombuffer(data, np.uint8)
    quote = (text == ord('"')) & ~_escaped(text)
    in_string = (np.cumsum(quote, dtype=np.int32) & 1).astype(bool)
    step = _STEP[text]
    step[in_string] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _escaped(text: np.ndarray) -> np.ndarray:
    """True where a character follows an odd run of backslashes."""
    index = np.arange(len(text), dtype=np.int64)
    backslash = text == ord("\\")
    last_other = np.maximum.accumulate(np.where(backslash, -1, index))
    run = index - last_other  # backslashes ending at each index
    escaped = np.zeros(len(text), bool)
    escaped[1:] = (run[:-1] & 1).astype(bool)
    return escaped


# TOML: what starts or ends a string or comment, and the brackets between them. A multi-line
# string may end in up to two quotes of its own ("""a""""" is 'a""'), so its end takes them.
_TOML_TOKEN = re.compile(r'"""|\'\'\'|"|\'|#|[\[\]{}]')
_TOML_END = {'"""': re.compile(r'(?<!\\)(?:\\\\)*"{3,5}'), "'''": re.compile(r"'{3,5}"),
             '"': re.compile(r'(?<!\\)(?:\\\\)*"'), "'": re.compile(r"'"), "#": re.compile(r"\n|\Z")}


def loads_toml(text: str, max_bytes: int | None = MAX_TOML_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """``tomllib.loads`` within the bounds; ``MessageError`` if out of them, ``TOMLDecodeError``
    as before for a syntax error.

    Brackets are counted before (``tomllib`` recurses on them); dotted keys (``a.b.c = 1``,
    ``[a.b.c]``) nest without recursing there, so the document is measured after, without
    recursion, before any caller walks or prints it."""
    _check_size(len(text.encode()), max_bytes)
    if text.count("{") + text.count("[") > max_depth:
        _check_depth(toml_depth(text), max_depth)
    document = tomllib.loads(text)
    _check_depth(document_depth(document), max_depth)
    return document


def document_depth(value: Any) -> int:
    """How deep dicts and lists nest in ``value``, measured with a stack of its own."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in item)
    return deepest


def toml_depth(text: str) -> int:
    """The deepest nesting of inline tables, arrays and headers, strings and comments skipped."""
    depth = deepest = position = 0
    while (token := _TOML_TOKEN.search(text, position)) is not None:
        found = token.group()
        if found in _TOML_END:
            end = _TOML_END[found].search(text, token.end())
            position = end.end() if end else len(text)
            continue
        depth += 1 if found in "[{" else -1
        deepest = max(deepest, depth)
        position = token.end()
    return deepest


def _check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise MessageError(f"{size} bytes, more than the {max_bytes} allowed; send less")


def _check_depth(depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise MessageError(f"nested {depth} deep, deeper than the {max_depth} levels of arrays and "
                           "objects allowed; send flatter data")
