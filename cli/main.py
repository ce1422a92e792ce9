"""The ``connstats`` command: sub-apps composed in one place.

Every expected failure is a ``ConnstatsError``; ``ConnstatsGroup`` turns it into one line
``error: <message>`` on stderr and exit status 1, never a traceback.

A command's module is imported when that command runs (``COMMANDS`` says which module
holds it), not every module for every command: ``connstats list`` loads no BPF loader,
web server or InfluxDB client, and starts in a third of the time.
"""
from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

from connstats.probe.contract.errors import ConnstatsError

# every command, in the order `connstats --help` lists them, and the module that defines it
COMMANDS = {
    "up": "run_commands", "probe": "run_commands", "sink": "run_commands",
    "attach": "control", "detach": "control", "list": "control", "stats": "control",
    "top": "top", "history": "history", "ui": "ui", "policy": "policy",
    "alert": "alert", "alerts": "alert", "deadletter": "deadletter", "doctor": "doctor", "reset": "reset",
}


class ConnstatsGroup(TyperGroup):
    """Finds a command in its module on first use, lists them in ``COMMANDS``' order, and
    reports ``ConnstatsError``s in one line."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name):
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = typer.main.get_command(importlib.import_module(f"connstats.cli.{module}").app)
        if command.name == cmd_name:  # a named sub-app (`policy`) or a module of one command
            return command
        return command.commands[cmd_name]  # type: ignore[attr-defined]  # a module of several

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


@app.callback()
def _connstats() -> None:
    """Per-connection traffic accounting for Linux network devices (eBPF, NATS JetStream)."""


def main() -> None:
    app()
