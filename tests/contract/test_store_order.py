"""``store_order``: an interval's records in the stores' key order, as SQLite orders the key itself."""
import socket
import sqlite3

import numpy as np

from connstats.probe.contract.flow_batch import address_column, store_order
from connstats.probe.contract.record import DIRECTIONS
from connstats.probe.kernel.loader import FLOW_KEY

# Texts whose order is not the numbers' (10 < 9 as text, 100 < 11, "200::1" between IPv4 texts)
IPV4 = ["0.0.0.0", "1.2.3.4", "9.0.0.1", "10.0.0.2", "10.0.0.10", "10.0.0.100", "10.0.1.1", "100.1.1.1",
        "11.0.0.1", "19.255.255.255", "2.2.2.2", "200.1.2.3", "255.255.255.255", "10.251.3.2"]
IPV6 = ["::1", "200::1", "2001:db8::1", "2001:db8::10", "2001:db8::9", "fe80::1", "::ffff:10.0.0.1", "fd00::",
        "20::", "1::"]


def interval_keys(count: int, seed: int) -> np.ndarray:
    """``count`` distinct FLOW_KEYs over both families (and some non-IP), in a random order."""
    rng = np.random.default_rng(seed)
    keys = np.zeros(count, FLOW_KEY)
    keys["ifindex"] = rng.choice([3, 12, 40], count)
    keys["direction"] = rng.integers(0, 2, count)
    keys["proto"] = rng.choice([1, 6, 17], count)
    keys["family"] = rng.choice([0, 4, 4, 6], count)
    for end in ("src", "dst"):
        raw = np.zeros((count, 16), np.uint8)
        for row, family in enumerate(keys["family"]):
            if family == 4:
                raw[row, :4] = np.frombuffer(socket.inet_aton(rng.choice(IPV4)), np.uint8)
            elif family == 6:
                raw[row] = np.frombuffer(socket.inet_pton(socket.AF_INET6, rng.choice(IPV6)), np.uint8)
        keys[end] = raw.view("V16").ravel()
    keys["sport"] = rng.permutation(count)  # distinct: every key is
    keys["dport"] = rng.choice([0, 53, 443, 8080], count)
    return keys


def sqlite_order(keys: np.ndarray) -> list[int]:
    """The keys' positions in the order SQLite keeps a ``WITHOUT ROWID`` table with the flows key."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (ifindex INTEGER, direction TEXT, proto INTEGER, src_ip TEXT, dst_ip TEXT, "
               "src_port INTEGER, dst_port INTEGER, position INTEGER, PRIMARY KEY (ifindex, direction, proto, "
               "src_ip, dst_ip, src_port, dst_port)) WITHOUT ROWID")
    families = keys["family"]
    rows = zip(keys["ifindex"].tolist(), [DIRECTIONS[d] for d in keys["direction"]], keys["proto"].tolist(),
               address_column(families, keys["src"]), address_column(families, keys["dst"]),
               keys["sport"].tolist(), keys["dport"].tolist(), range(len(keys)), strict=True)
    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return [position for (position,) in db.execute("SELECT position FROM t")]


def test_an_interval_comes_out_in_the_order_sqlite_keeps_its_key():
    for seed in range(5):
        keys = interval_keys(3000, seed)
        assert store_order(keys).tolist() == sqlite_order(keys)


def test_an_interval_of_ipv4_alone_comes_out_in_sqlites_order():
    keys = interval_keys(3000, 7)
    keys = keys[keys["family"] == 4]
    assert store_order(keys).tolist() == sqlite_order(keys)


def test_the_order_is_a_function_of_the_contents_not_of_the_read_order():
    keys = interval_keys(2000, 11)
    shuffled = keys[np.random.default_rng(12).permutation(len(keys))]
    assert keys[store_order(keys)].tobytes() == shuffled[store_order(shuffled)].tobytes()


def test_no_records_no_order():
    assert store_order(np.zeros(0, FLOW_KEY)).tolist() == []
