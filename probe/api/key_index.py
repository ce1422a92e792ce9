"""Connection keys packed into uint64 words, hashed, and found by hash in numpy.

What ``ConnectionTotals`` (totals.py) uses to match each interval's records to the
connections it tracks without a Python dict lookup per record: ``packed_keys`` turns a
batch's key columns into ``KEY_WORDS`` rows of words (equal iff the keys are equal),
``key_hashes`` hashes them, and ``HashIndex`` maps hashes to slots, checking the whole
packed key so that keys which share a hash stay apart.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..contract.flow_batch import FlowBatch
from ..contract.record import DIRECTIONS


class IndexedColumns(Protocol):
    """What ``HashIndex.find`` reads of the tracked connections, per slot."""

    hash: np.ndarray  # uint64, the key's hash
    words: np.ndarray  # KEY_WORDS rows of uint64, a column per slot
    used: np.ndarray  # bool per row: not zero for some slot


_ADDRESS_BYTES = 48  # the longest address text (45), padded to whole uint64 words
KEY_WORDS = 2 + 2 * _ADDRESS_BYTES // 8  # uint64 words of a packed key
# odd multipliers: one per key word (so that equal words in two places hash apart), then splitmix64's
_WORD_MIX = [np.uint64((0x9E3779B97F4A7C15 * (2 * j + 1)) % 2**64) for j in range(KEY_WORDS)]
_FINISH = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def packed_keys(batch: FlowBatch) -> np.ndarray:
    """The records' keys as ``KEY_WORDS`` rows of uint64 words, a column per record, equal
    iff the keys are: (ifindex, ports), (direction, protocol), then each address's text,
    NUL-padded (IPv4 text fills 2 of its 6 words: the others are zero throughout)."""
    c = batch.columns
    words = np.empty((KEY_WORDS, len(batch)), dtype=np.uint64)
    ports = np.asarray(c.src_port, dtype=np.uint64) << np.uint64(16) | np.asarray(c.dst_port, dtype=np.uint64)
    words[0] = np.asarray(c.ifindex, dtype=np.uint64) << np.uint64(32) | ports
    ingress = (np.asarray(c.direction, dtype=object) == DIRECTIONS[0]).astype(np.uint64)
    words[1] = ingress << np.uint64(8) | np.asarray(c.proto, dtype=np.uint64)
    per_address = _ADDRESS_BYTES // 8
    for n, texts in enumerate((c.src_ip, c.dst_ip)):
        encoded = np.asarray(texts, dtype=f"S{_ADDRESS_BYTES}")
        words[2 + n * per_address:2 + (n + 1) * per_address] = encoded.view(np.uint64).reshape(-1, per_address).T
    return words


def nonzero_words(words: np.ndarray) -> np.ndarray:
    """Which rows of ``words`` are not zero for every record: a bool per row."""
    return np.asarray(words.any(axis=1))  # a 2-D array: one bool per row, never a scalar


def key_hashes(words: np.ndarray, used: np.ndarray) -> np.ndarray:
    """A 64-bit hash per packed key: the sum of its words' hashes (uint64, wrapping by
    design), each a multiply then splitmix64's finish. A zero word adds nothing, so only
    the ``used`` rows are hashed (most address words of IPv4 text are zero throughout)."""
    h = np.zeros(words.shape[1], dtype=np.uint64)
    for row in np.flatnonzero(used).tolist():
        x = words[row] * _WORD_MIX[row]
        x ^= x >> np.uint64(30)
        x *= _FINISH[0]
        x ^= x >> np.uint64(27)
        x *= _FINISH[1]
        x ^= x >> np.uint64(31)
        h += x
    return h


class HashIndex:
    """Slots by key hash: open addressing with linear probing, in numpy.

    ``buckets`` holds a slot or -1 (empty), at least half of them empty; a key's search
    starts at its hash modulo the bucket count and goes on to the next bucket until it
    finds its slot (same hash, same packed key) or an empty bucket. Every step is one
    vectorised pass over the records still searching: keys that share a hash are found
    all the same, a step later.
    """

    def __init__(self) -> None:
        self.buckets = np.full(8, -1, dtype=np.int64)

    def find(self, hashes: np.ndarray, words: np.ndarray, used: np.ndarray,
             columns: IndexedColumns) -> np.ndarray:
        """The slot of each key (``hashes``; ``words``, a column per record); -1 if none.
        Only the key words that are not zero throughout the records (``used``) or the table
        (``columns.used``) need comparing: the others are zero on both sides."""
        compared = np.flatnonzero(used | columns.used).tolist()
        slots = np.full(len(hashes), -1, dtype=np.int64)
        mask = np.uint64(len(self.buckets) - 1)
        rows = np.arange(len(hashes))
        at = (hashes & mask).astype(np.int64)
        while len(rows):
            candidate = self.buckets[at]
            occupied = candidate >= 0  # an empty bucket ends the search: not tracked
            rows, at, candidate = rows[occupied], at[occupied], candidate[occupied]
            same = np.flatnonzero(columns.hash[candidate] == hashes[rows])
            for row in compared:
                same = same[columns.words[row][candidate[same]] == words[row][rows[same]]]
            slots[rows[same]] = candidate[same]
            searching = np.ones(len(rows), dtype=bool)
            searching[same] = False
            rows, at = rows[searching], (at[searching] + 1) & (len(self.buckets) - 1)
        return slots

    def index(self, hashes: np.ndarray, new_from: int) -> None:
        """Make slots ``new_from`` .. ``len(hashes) - 1`` findable (``hashes``: every slot's).
        When fewer than half the buckets would stay empty, they double and every slot is
        placed again."""
        if 2 * len(hashes) > len(self.buckets):
            self.buckets = np.full(1 << max(3, (2 * len(hashes) - 1).bit_length()), -1, dtype=np.int64)
            new_from = 0
        self._place(np.arange(new_from, len(hashes)), hashes[new_from:])

    def _place(self, slots: np.ndarray, hashes: np.ndarray) -> None:
        last = len(self.buckets) - 1
        at = (hashes & np.uint64(last)).astype(np.int64)
        while len(slots):
            free = np.flatnonzero(self.buckets[at] < 0)
            _, first = np.unique(at[free], return_index=True)  # one slot per free bucket
            placed = free[first]
            self.buckets[at[placed]] = slots[placed]
            left = np.ones(len(slots), dtype=bool)
            left[placed] = False
            slots, at = slots[left], (at[left] + 1) & last
