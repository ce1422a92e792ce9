"""The drop-reason names come from the kfree_skb format file, never from a table."""
from __future__ import annotations

from connstats.probe.quality.quality import QualitySupport, drop_reasons, first_drop_reason

FORMAT = '''name: kfree_skb
format:
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u reason: %s", REC->skbaddr, REC->protocol, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 12, "NETFILTER_DROP" }, { 0x10001, "MAC80211_X" }, { 130, "MAX" })
'''


def test_the_names_are_read_from_print_symbolic():
    assert drop_reasons(FORMAT) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 12: "NETFILTER_DROP", 0x10001: "MAC80211_X",
                                    130: "MAX"}


def test_only_the_reason_field_is_read():
    other = 'print fmt: "%s %s", __print_symbolic(REC->family, { 2, "AF_INET" }), REC->x'
    assert drop_reasons(other) == {}
    assert drop_reasons(other.replace("REC->x", FORMAT.split("REC->protocol, ")[1])) == {
        2: "NOT_SPECIFIED", 3: "NO_SOCKET", 12: "NETFILTER_DROP", 0x10001: "MAC80211_X", 130: "MAX"}


def test_a_format_without_reasons_names_none():
    assert drop_reasons('print fmt: "skbaddr=%p protocol=%u location=%p", REC->skbaddr') == {}


def test_codes_below_the_first_drop_are_no_drops():
    assert first_drop_reason({0: "NOT_DROPPED_YET", 1: "CONSUMED", 2: "NOT_SPECIFIED", 3: "NO_SOCKET"}) == 2
    assert first_drop_reason({2: "NOT_SPECIFIED", 3: "NO_SOCKET"}) == 2
    assert first_drop_reason({0: "NOT_SPECIFIED", 1: "NO_SOCKET"}) == 0  # 5.17: no NOT_DROPPED_YET yet


def test_what_is_missing_is_said_in_one_line():
    from pathlib import Path

    assert QualitySupport(False, True, None, ()).problem == "the quality tracepoints need root; run with sudo"
    assert "tracefs" in (QualitySupport(True, True, None, ()).problem or "")
    assert "tcp/tcp_probe" in (QualitySupport(True, True, Path("/x"), ("tcp/tcp_probe",)).problem or "")
    assert QualitySupport(True, True, Path("/x"), ()).problem is None
