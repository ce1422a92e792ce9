"""The ``connstats`` command: sub-apps composed in one place.

Every expected failure is a ``ConnstatsError``; ``ConnstatsGroup`` turns it into one line
``error: <message>`` on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import typer
from typer.core import TyperGroup

from connstats.probe.contract import ConnstatsError

from . import alert, control, deadletter, doctor, history, policy, reset, run_commands, top, ui


class ConnstatsGroup(TyperGroup):
    """Lists commands in the order they were added, and reports ``ConnstatsError``s in one line."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConnstatsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ConnstatsGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Per-connection traffic accounting for Linux network devices (eBPF, NATS JetStream).",
)
for module in (run_commands, control, top, history, ui, policy, alert, deadletter, doctor, reset):
    app.add_typer(module.app)  # policy.app is named: `connstats policy ...`


def main() -> None:
    app()
