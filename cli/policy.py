"""``connstats policy``: microsegmentation policies (learn; apply, show and off come with
the enforcing probe)."""
from __future__ import annotations

import typer

from . import policy_learn

app = typer.Typer(name="policy", no_args_is_help=True,
                  help="Microsegmentation: learn who talks to whom as a policy file.")
app.command("learn")(policy_learn.learn)
