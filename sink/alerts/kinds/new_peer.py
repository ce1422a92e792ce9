"""``new_peer``: a group talks to an address it did not talk to while learning.

    [[rule]]
    name = "new-peer"
    kind = "new_peer"
    by = ["container_name"]
    where = { direction = "egress" }
    field = "dst_ip"              # the peer's address [default: dst_ip]
    learn = "1h"                  # [default: 1h]
    window = "5m"                 # firing while seen within this [default: 1m]
"""
from __future__ import annotations

from .novelty import Novelty


class NewPeer(Novelty):
    name = "new_peer"
    noun = "peer"
    options = Novelty.make_options("dst_ip")
