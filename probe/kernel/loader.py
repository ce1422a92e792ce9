"""Load the classifier and talk to its maps through libbpf.

This is the only module that imports bcc. The numpy dtypes below mirror the C
structs in ``flows_structs.h`` field for field.
"""
from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract.errors import KernelError

if TYPE_CHECKING:
    from bcc import BPF  # untyped: Any to mypy; imported where the classifier is loaded

BPF_SOURCE = Path(__file__).with_name("flows.bpf.c")
DEFAULT_CAPACITY = 131_072

FLOW_KEY = np.dtype(
    [
        ("ifindex", "<u4"),
        ("direction", "u1"),
        ("family", "u1"),
        ("proto", "u1"),
        ("pad", "u1"),
        ("src", "V16"),
        ("dst", "V16"),
        ("sport", "<u2"),
        ("dport", "<u2"),
    ]
)
FLOW4_KEY = np.dtype(
    [
        ("ifindex", "<u4"),
        ("direction", "u1"),
        ("family", "u1"),
        ("proto", "u1"),
        ("pad", "u1"),
        ("src", "V4"),
        ("dst", "V4"),
        ("sport", "<u2"),
        ("dport", "<u2"),
    ]
)
FLOW_COUNTERS = np.dtype(
    [
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("first_seen_ns", "<u8"),
        ("last_seen_ns", "<u8"),
        ("tcp_flags", "<u8"),
        ("verdict", "<u4"),  # VERDICTS index: "", allow, deny
        ("policy", "<u4"),  # the policy word it was judged under (probe/policy/tables.py)
    ]
)
# The counters before the policy fields: older map layouts are read with it (handover.py).
FLOW_COUNTERS_V1 = np.dtype([(name, FLOW_COUNTERS[name]) for name in (FLOW_COUNTERS.names or ())[:5]])
VERDICTS = ("", "allow", "deny")
assert FLOW_KEY.itemsize == 44 and FLOW4_KEY.itemsize == 20 and FLOW_COUNTERS.itemsize == 48
assert FLOW_COUNTERS_V1.itemsize == 40

_SYS_MEMBARRIER = 324  # x86_64
_MEMBARRIER_CMD_GLOBAL = 1
_FALLBACK_GRACE_SECONDS = 0.05


class _TestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` of libbpf 1.x."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _load_libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_map_lookup_and_delete_batch.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
    ]
    lib.bpf_map_lookup_and_delete_batch.restype = ctypes.c_int
    lib.bpf_map_lookup_batch.argtypes = lib.bpf_map_lookup_and_delete_batch.argtypes
    lib.bpf_map_lookup_batch.restype = ctypes.c_int
    lib.bpf_map_delete_batch.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
    ]
    lib.bpf_map_delete_batch.restype = ctypes.c_int
    lib.bpf_map_update_batch.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
    ]
    lib.bpf_map_update_batch.restype = ctypes.c_int
    lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    lib.bpf_prog_test_run_opts.restype = ctypes.c_int
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
    return lib


_libbpf: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)


def libbpf() -> ctypes.CDLL:
    global _libbpf
    if _libbpf is None:
        try:
            _libbpf = _load_libbpf()
        except OSError as exc:
            raise KernelError(
                "libbpf.so.1 not found; install the Debian package libbpf1 (make install does)"
            ) from exc
    return _libbpf


def read_map(map_fd: int, capacity: int, key_dtype: np.dtype, value_dtype: np.dtype):
    """Read every entry of a hash map without deleting it.

    Of a map without writers (the inactive buffer) this is exact, and reading it again
    gives the same entries in the same order; of the active buffer it is a live view.
    """
    return _batch(libbpf().bpf_map_lookup_batch, map_fd, capacity, key_dtype, value_dtype)


def delete_keys(map_fd: int, keys: np.ndarray) -> None:
    """Delete ``keys`` (read before with ``read_map``) from a hash map, in one batch."""
    if not len(keys):
        return
    keys = np.ascontiguousarray(keys)
    count = ctypes.c_uint32(len(keys))
    if libbpf().bpf_map_delete_batch(map_fd, keys.ctypes.data, ctypes.byref(count), None) != 0:
        err = ctypes.get_errno()
        if err != errno.ENOENT:
            raise KernelError(f"emptying a BPF map failed: {os.strerror(err)}; is the kernel >= 5.6?")


def update_batch(map_fd: int, keys: np.ndarray, values: np.ndarray) -> None:
    """Write ``keys`` -> ``values`` (equal lengths, the map's key and value layouts) in one
    system call; ``KernelError`` naming the reason (E2BIG/ENOSPC: the map is full)."""
    if not len(keys):
        return
    keys, values = np.ascontiguousarray(keys), np.ascontiguousarray(values)
    count = ctypes.c_uint32(len(keys))
    if libbpf().bpf_map_update_batch(map_fd, keys.ctypes.data, values.ctypes.data, ctypes.byref(count), None) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"writing a BPF map in batches failed after {count.value} of {len(keys)} "
                          f"entries: {os.strerror(err)}")


class _MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info``."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class PinnedMap:
    """A map opened from its pin in bpffs, with the sizes the kernel reports for it."""

    fd: int
    key_size: int
    value_size: int
    max_entries: int

    def close(self) -> None:
        os.close(self.fd)


def open_pinned_map(path: str | os.PathLike) -> PinnedMap:
    """Open a pinned map (for example one of an older map layout); raise ``KernelError``."""
    fd = libbpf().bpf_obj_get(os.fsencode(path))
    if fd < 0:
        err = ctypes.get_errno()
        raise KernelError(f"cannot open the pinned map {path}: {os.strerror(err)}")
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise KernelError(f"cannot read what the pinned map {path} is: {os.strerror(err)}")
    return PinnedMap(fd, info.key_size, info.value_size, info.max_entries)


def _batch(operation, map_fd: int, capacity: int, key_dtype: np.dtype, value_dtype: np.dtype):
    keys = np.empty(capacity, dtype=key_dtype)
    values = np.empty(capacity, dtype=value_dtype)
    batch_in = ctypes.c_uint32(0)
    batch_out = ctypes.c_uint32(0)
    count = ctypes.c_uint32(0)
    total = 0
    first = True
    while total < capacity:
        count.value = capacity - total
        rc = operation(
            map_fd,
            None if first else ctypes.byref(batch_in),
            ctypes.byref(batch_out),
            keys.ctypes.data + total * key_dtype.itemsize,
            values.ctypes.data + total * value_dtype.itemsize,
            ctypes.byref(count),
            None,
        )
        err = ctypes.get_errno()
        total += count.value
        if rc != 0:
            if err == errno.ENOENT:
                break
            raise KernelError(f"reading a BPF map in batches failed: {os.strerror(err)}; is the kernel >= 5.6?")
        first = False
        batch_in.value = batch_out.value
    return keys[:total], values[:total]


def widen_ipv4_keys(keys4: np.ndarray) -> np.ndarray:
    """Copy ``FLOW4_KEY`` entries into the common ``FLOW_KEY`` layout (addresses zero-padded)."""
    narrow = keys4.view(np.uint8).reshape(-1, FLOW4_KEY.itemsize)
    wide = np.zeros((len(keys4), FLOW_KEY.itemsize), dtype=np.uint8)
    wide[:, 0:8] = narrow[:, 0:8]  # ifindex, direction, family, proto, pad
    wide[:, 8:12] = narrow[:, 8:12]  # src
    wide[:, 24:28] = narrow[:, 12:16]  # dst
    wide[:, 40:44] = narrow[:, 16:20]  # sport, dport
    return wide.view(FLOW_KEY).reshape(-1)


def wait_for_grace_period() -> None:
    """Wait until no BPF program can still hold a pointer into the old buffer.

    ``membarrier(MEMBARRIER_CMD_GLOBAL)`` returns after an RCU grace period, and TC
    programs run inside RCU read-side sections. Where it is refused (nohz_full,
    seccomp), sleep: programs run for nanoseconds, so 50 ms is a wide margin.
    """
    if _libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(_FALLBACK_GRACE_SECONDS)


def test_run(prog_fd: int, packet: bytes, repeat: int, ctx: bytes | None = None):
    """Run a program ``repeat`` times on ``packet`` in the kernel; return (retval, ns per run)."""
    data = ctypes.create_string_buffer(packet, len(packet))
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    opts.data_in = ctypes.addressof(data)
    opts.data_size_in = len(packet)
    opts.repeat = repeat
    if ctx is not None:
        ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ctypes.addressof(ctx_buf)
        opts.ctx_size_in = len(ctx)
    if libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return opts.retval, opts.duration


@dataclass
class ClassifierProgram:
    """The loaded classifier: two program fds and its maps, from one BPF object."""

    bpf: BPF
    capacity: int
    ingress_fd: int
    egress_fd: int
    pin_dir: Path | None = None  # where the maps are pinned; None: they die with the process

    def flow_map_fd(self, family: int, buffer: int) -> int:
        return self.bpf[f"flows{family}_{buffer}".encode()].map_fd

    @property
    def active_buffer(self):
        return self.bpf[b"active_buffer"]

    @property
    def devices(self):
        return self.bpf[b"devices"]

    @property
    def overflow(self):
        return self.bpf[b"overflow"]

    @property
    def overflow_unattributed(self):
        return self.bpf[b"overflow_unattributed"]

    @property
    def probe_state(self):
        return self.bpf[b"probe_state"]

    def table(self, name: str):
        """Any other map of the program by name (the policy tables: probe/policy/tables.py)."""
        return self.bpf[name.encode()]

    def close(self) -> None:
        """Release the programs and our references to the maps (pins keep them alive)."""
        self.bpf.cleanup()


# The kernel refuses larger hash maps (htab's bucket count must fit in a u32 of
# pointers), and long before that the memory runs out: four maps of ~100 bytes an entry.
MAX_CAPACITY = 1 << 26


def load_classifier(capacity: int = DEFAULT_CAPACITY, overflow_capacity: int | None = None,
                    pin_dir: Path | None = None) -> ClassifierProgram:
    """Compile and load the classifier with ``capacity`` connections per buffer (and, for
    tests, room for ``overflow_capacity`` (device, direction, buffer) overflow counters).

    With ``pin_dir`` (a directory in bpffs) the maps are pinned there, or taken over
    with their contents if a probe before this one pinned them.
    """
    if not 1 <= capacity <= MAX_CAPACITY:
        raise KernelError(f"capacity {capacity} is not between 1 and {MAX_CAPACITY}; "
                          "choose another --capacity")
    if os.geteuid() != 0:
        raise KernelError("loading BPF needs root (or CAP_BPF+CAP_NET_ADMIN); run with sudo")
    try:
        from bcc import BPF
    except ImportError as exc:
        raise KernelError(
            "cannot import bcc; install python3-bpfcc and use a venv made with "
            "--system-site-packages (make install does both)"
        ) from exc
    # BCC compiles the file as /virtual/main.c: its headers (flows_*.h) are found by -I
    cflags = [f"-DFLOW_CAPACITY={capacity}", "-Wno-unused-function", f"-I{BPF_SOURCE.parent}"]
    if overflow_capacity is not None:
        cflags.append(f"-DOVERFLOW_CAPACITY={overflow_capacity}")
    if pin_dir is not None:
        cflags.append(f'-DPIN_DIR="{pin_dir}"')
    failure: Exception | None
    with _stderr_captured() as said:
        try:
            bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
            ingress = bpf.load_func(b"connstats_ingress", BPF.SCHED_CLS)
            egress = bpf.load_func(b"connstats_egress", BPF.SCHED_CLS)
        except Exception as exc:  # bcc raises bare Exception
            failure = exc
        else:
            failure = None
    if failure is not None:
        raise KernelError(_explain_bcc_failure(failure, capacity, said)) from failure
    return ClassifierProgram(bpf, capacity, ingress.fd, egress.fd, pin_dir)


@contextmanager
def _stderr_captured():
    """Collect what libbcc prints on file descriptor 2 while loading; yields a list that
    holds the text afterwards. Passed on to stderr when the load succeeds (warnings)."""
    said: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode(errors="replace"))


def _explain_bcc_failure(exc: Exception, capacity: int, said: list[str]) -> str:
    printed = [line.strip() for line in "".join(said).splitlines() if line.strip()]
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if any("could not open bpf map" in line for line in printed):
        map_line = next(line for line in printed if "could not open bpf map" in line)
        return (f"the kernel refused the flow maps for capacity {capacity} ({map_line}); "
                "choose a smaller --capacity or free memory")
    if printed:
        text = f"{text}: {printed[-1]}"
    if "kernel headers" in str(exc) or "modules" in str(exc):
        return (
            "BCC cannot find kernel headers; run `make install` or link "
            f"/lib/modules/{os.uname().release}/{{build,source}} to installed headers ({text})"
        )
    return f"loading the BPF classifier failed: {text}; run `connstats doctor`"
