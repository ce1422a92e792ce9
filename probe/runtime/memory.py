"""What a long-running process gives back to the system: glibc's heap, bounded and trimmed.

Two habits of glibc's malloc make ``up`` hold far more than it uses (docs/performance.md,
"Memory"):

* BCC compiles each BPF program with clang and LLVM in this process; what they free
  (~50 MiB for the classifier and the socket-owner tracepoints) stays in malloc's free
  lists, resident, for the life of the process. ``release_freed_memory()`` after the
  programs are loaded hands it back (``malloc_trim(0)``: every arena, free pages in the
  middle of the heap too).
* An allocation of ``M_MMAP_THRESHOLD`` bytes or more is mmapped and unmapped on free, but
  glibc raises that threshold to the size of every such block freed (up to 32 MiB), so
  after the first interval the per-interval numpy arrays (1-6 MiB for a full map) come
  from the heap, and the heap keeps the largest size an interval ever needed, fragmented
  across the threads' arenas. ``bound_heap()`` fixes the threshold (which turns the
  raising off), so those arrays go back to the system when they are freed.

* clang's and LLVM's code (~70 MiB of ``libLLVM`` and ``libclang-cpp`` text) stays mapped
  and resident after the compile, though nothing runs it again. ``drop_compiler_pages()``
  unmaps those pages from this process (``MADV_DONTNEED`` on read-only mappings without a
  private copy of any page: their content is the file's). They stay in the page cache,
  reclaimable like any cached file, and come back by page fault if BCC ever compiles again.

Each does nothing where the C library or kernel has no such call, and says so in the result.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

MADV_DONTNEED = 4
COMPILER_LIBRARIES = ("libLLVM", "libclang")  # file names starting so: what BCC compiles with
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD = 256 * 1024  # bytes: blocks from here up are mmapped and unmapped on free

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)


def anon_kib() -> int:
    """This process's resident anonymous memory (``RssAnon``), KiB; 0 where it is not reported."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``threshold`` bytes and more mmapped (and unmapped on free) from now on,
    a fixed threshold instead of glibc's rising one; False where mallopt is missing or refused."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def release_freed_memory() -> int:
    """Give the pages malloc holds free back to the system (``malloc_trim(0)``); returns
    how many KiB of resident anonymous memory that released (-1: no malloc_trim here)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return -1
    trim.argtypes = [ctypes.c_size_t]
    before = anon_kib()
    trim(0)
    return max(0, before - anon_kib())


def drop_compiler_pages(prefixes: tuple[str, ...] = COMPILER_LIBRARIES) -> int:
    """Unmap the resident pages of the compiler's read-only, never written mappings (see the
    module docstring); returns how many KiB of RSS that was (-1: no madvise here)."""
    madvise = getattr(_libc, "madvise", None)
    if madvise is None:
        return -1
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dropped = 0
    for start, end, rss in _clean_read_only_mappings(prefixes):
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += rss
    return dropped


def _clean_read_only_mappings(prefixes: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """(start, end, Rss KiB) of the mappings of files named ``prefixes*`` that are not writable
    and hold no anonymous (copied-on-write) page, from /proc/self/smaps."""
    found, current = [], None
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:  # a mapping's head line
            start, end = (int(part, 16) for part in fields[0].split("-"))
            name = Path(fields[5]).name if len(fields) > 5 else ""
            current = [start, end, 0] if "w" not in fields[1] and name.startswith(prefixes) else None
        elif current is not None and fields[0] == "Rss:":
            current[2] = int(fields[1])
        elif current is not None and fields[0] == "Anonymous:" and int(fields[1]) == 0 and current[2]:
            found.append((current[0], current[1], current[2]))
    return found
