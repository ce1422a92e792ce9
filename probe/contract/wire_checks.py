"""The rules of a flow message that span fields, checked after msgspec checked each type
and bound: interval and chunk, equal column lengths, a device per ifindex, and addresses of
the record's family. Column-wise, in C where it can; each raises ``MessageError`` saying what
is wrong and where (``- at `$.path```).
"""
from __future__ import annotations

import socket
from itertools import compress, repeat
from typing import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import MessageError
from .wire_schema import FLOW_COLUMNS, Device, FlowColumns, WireEnvelope

_ADDRESS_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def schema_reason(reason: str) -> str:
    """msgspec's validation message, with an unknown schema version said plainly."""
    if reason.endswith("- at `$.schema`"):
        return f"schema version {reason.split()[2]} is not 1 or 2 - at `$.schema`"
    return reason


def check_envelope(doc: WireEnvelope) -> None:
    if doc.interval_end < doc.interval_start:
        raise MessageError(f"interval_end {doc.interval_end} is before interval_start "
                           f"{doc.interval_start} - at `$.interval_end`")
    if doc.chunk >= doc.chunks:
        raise MessageError(f"chunk {doc.chunk} is not below chunks {doc.chunks} - at `$.chunk`")
    if doc.overflow and doc.chunk != 0:
        raise MessageError(f"chunk {doc.chunk} carries overflow; only chunk 0 does - at `$.overflow`")
    if getattr(doc, "drops", None) and doc.chunk != 0:
        raise MessageError(f"chunk {doc.chunk} carries drops; only chunk 0 does - at `$.drops`")


def check_columns(columns: FlowColumns, devices: list[Device]) -> None:
    """Schema 2: one entry per record in every column, each device once, a device per ifindex."""
    count = len(columns.ifindex)
    for name in FLOW_COLUMNS:
        if len(getattr(columns, name)) != count:
            raise MessageError(f"flows.{name} has {len(getattr(columns, name))} entries, flows.ifindex "
                               f"{count}; every column has one per record - at `$.flows.{name}`")
    known = {d.ifindex for d in devices}
    if len(known) != len(devices):
        raise MessageError("a device is listed twice - at `$.devices`")
    unknown = set(columns.ifindex) - known
    if unknown:
        raise MessageError(f"ifindex {min(unknown)} has no entry in devices - at `$.flows.ifindex`")


def check_addresses(families: Sequence[int] | NDArray[np.generic],
                    columns: Mapping[str, Sequence[str] | NDArray[np.generic]], where: str) -> None:
    """Family 4 records carry IPv4 text, family 6 IPv6 text, family 0 empty addresses.

    Column-wise, in C: each column's texts of one family go through ``inet_pton`` in one
    ``map``. (Checking only distinct texts costs more than it saves: hashing 131,072 fresh
    strings takes longer than ``inet_pton`` on them, measured.)"""
    present = set(families)
    masks = {family: list(map(family.__eq__, families)) for family in present} if len(present) > 1 else {}
    for name, texts in columns.items():
        for family in present:
            chosen = compress(texts, masks[family]) if masks else texts
            if not _all_of_family(family, chosen):
                i = next(i for i, (f, t) in enumerate(zip(families, texts, strict=True))
                         if f == family and not _all_of_family(family, [t]))
                at = f"{where}[{i}]" if where == "$.records" else f"{where}.{name}[{i}]"
                raise MessageError(f"address {texts[i]!r} is not family {family} - at `{at}`")


def _all_of_family(family: int, texts: Iterable[str]) -> bool:
    if family == 0:
        return not any(texts)
    try:
        return all(map(socket.inet_pton, repeat(_ADDRESS_FAMILIES[family]), texts))
    except (OSError, ValueError, UnicodeError):  # not an address; NUL or a lone surrogate in it
        return False
