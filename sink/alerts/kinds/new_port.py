"""``new_port``: a group uses a server port it did not use while learning.

    [[rule]]
    name = "new-port"
    kind = "new_port"
    by = ["container_name"]
    where = { direction = "egress", proto = "tcp" }
    field = "dst_port"            # [default: dst_port]
    learn = "1h"
"""
from __future__ import annotations

from .novelty import Novelty


class NewPort(Novelty):
    name = "new_port"
    noun = "port"
    options = Novelty.make_options("dst_port")
