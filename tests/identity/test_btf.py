"""The pure-Python BTF reader against bpftool's dump of the running kernel's BTF."""
from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess

import pytest

from connstats.probe.identity.btf import VMLINUX_BTF, Btf, BtfError, sock_offsets
from connstats.probe.identity.naming import ProcessNamer

STRUCTS = ("sock", "sock_common", "net", "ns_common", "socket")


@pytest.fixture(scope="module")
def kernel_btf() -> Btf:
    if not VMLINUX_BTF.exists():
        pytest.skip("this kernel has no BTF")
    return Btf.read()


@pytest.fixture(scope="module")
def bpftool_types() -> dict[str, dict]:
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed (make test installs it)")
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "raw", "-j"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, dict] = {}
    for t in json.loads(out)["types"]:
        if t["kind"] == "STRUCT" and t["name"] in STRUCTS:
            found.setdefault(t["name"], t)
    return found


def test_every_member_of_the_structs_it_reads_is_where_bpftool_says(kernel_btf, bpftool_types):
    for name in STRUCTS:
        theirs = [(m["name"], m["type_id"], m["bits_offset"]) for m in bpftool_types[name]["members"]]
        ours = [(m.name or "(anon)", m.type_id, m.bit_offset) for m in kernel_btf.types[kernel_btf.structs[name]].members]
        assert ours == theirs, name


def test_the_socket_offsets_follow_bpftools_members(kernel_btf, bpftool_types):
    def member(struct_name: str, wanted: str) -> int:
        [bits] = [m["bits_offset"] for m in bpftool_types[struct_name]["members"] if m["name"] == wanted]
        return bits // 8

    offsets = sock_offsets(kernel_btf)
    assert offsets.skc_net == member("sock", "__sk_common") + member("sock_common", "skc_net")  # possible_net_t.net at 0
    assert offsets.net_ns == member("net", "ns")
    assert offsets.ns_inum == member("ns_common", "inum")
    # skc_num sits in an anonymous union/struct of sock_common: the reader looks inside
    assert member("sock", "__sk_common") + 12 <= offsets.skc_num < member("sock", "__sk_common") + 16
    assert offsets.cflags() == [f"-DOFF_SKC_NET={offsets.skc_net}", f"-DOFF_SKC_NUM={offsets.skc_num}",
                                f"-DOFF_NET_NS={offsets.net_ns}", f"-DOFF_NS_INUM={offsets.ns_inum}"]


def _blob(types: bytes, strings: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def test_a_made_up_blob_with_an_anonymous_union_and_a_typedef():
    strings = b"\0int\0outer\0a\0b\0t\0"
    def btf_type(name, kind, vlen, size):
        return struct.pack("<III", name, (kind << 24) | vlen, size)
    int_t = btf_type(1, 1, 0, 4) + struct.pack("<I", 32)  # id 1
    inner = btf_type(0, 5, 1, 4) + struct.pack("<III", 11, 1, 0)  # id 2: union { int a; }
    typedef = btf_type(15, 8, 0, 2)  # id 3: typedef union t
    outer = btf_type(5, 4, 2, 8) + struct.pack("<III", 13, 1, 0) + struct.pack("<III", 0, 3, 32)  # id 4
    btf = Btf(_blob(int_t + inner + typedef + outer, strings))
    assert (btf.offset("outer", "b"), btf.offset("outer", "a")) == (0, 4)
    with pytest.raises(BtfError, match="no member c"):
        btf.offset("outer", "c")
    with pytest.raises(BtfError, match="no struct nothing"):
        btf.offset("nothing")
    with pytest.raises(BtfError, match="not BTF"):
        Btf(b"\0" * 24 + strings)


@pytest.mark.parametrize("content", [None, b"\0" * 64], ids=["missing", "not-btf"])
def test_without_usable_btf_processes_are_off_with_one_log_line(tmp_path, caplog, content):
    path = tmp_path / "vmlinux"
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level(logging.INFO, "connstats.probe.identity"):
        assert ProcessNamer.start(1.0, btf_path=path) is None
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"processes not named: no usable kernel BTF at {path} (")
    assert line.endswith("a kernel built with CONFIG_DEBUG_INFO_BTF names processes")
