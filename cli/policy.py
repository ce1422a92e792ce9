"""``connstats policy learn|apply|show|off``: the running probe's microsegmentation policy.

``apply`` checks the file here first (an error names its line and key), then sends it to the
probe of ``--host`` over NATS request/reply (verb ``policy_apply``: the admin role may send
it); the probe keeps it in its state directory and applies it again after a restart.
The request carries its deadline (``--timeout`` less a margin for the reply): the probe
applies nothing after it, and a newer apply supersedes one still compiling, so the answer
is always applied or not applied.
``learn`` (a policy from the traffic in the store) is ``policy_learn.learn``.
"""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from connstats.probe.contract import ConfigError, parse_policy

from . import policy_learn
from .control import Timeout, request
from .options import (
    ConfigFile,
    Format,
    Host,
    Nats,
    NatsCreds,
    NatsFlags,
    OutputFormat,
    TlsCa,
    TlsCert,
    TlsKey,
    load_config,
)
from .render import Column, render

app = typer.Typer(name="policy", no_args_is_help=True,
                  help="Microsegmentation: learn a policy from the store; apply, show or remove the "
                       "policy a probe enforces.")
app.command("learn")(policy_learn.learn)

GOVERNED_COLUMNS = (Column("ifname", "IFACE"), Column("ifindex", "IFINDEX", "int"), Column("groups", "GROUPS"))


class Mode(str, Enum):
    monitor = "monitor"
    protect = "protect"


def read_policy_file(path: Path) -> str:
    """The file's text, checked; ``PolicyError`` names the line and key."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the policy file {path}: {reason}; check the path") from None
    parse_policy(text, str(path))
    return text


def reply_margin(timeout: float) -> float:
    """What of ``--timeout`` the probe leaves for its reply to come back: it applies nothing
    after ``timeout - margin``, so when the CLI stops waiting the answer is "not applied"."""
    return min(1.0, timeout / 5)


def _print_summary(reply: dict, format: OutputFormat) -> None:
    rows = [row | {"groups": ",".join(row["groups"])} for row in reply.get("governed", [])]
    if format is OutputFormat.table:
        typer.echo(f"mode {reply['mode']}: {reply['groups']} groups, {reply['rules']} rules, "
                   f"{len(rows)} governed devices")
    render(rows, GOVERNED_COLUMNS, format, empty="(no governed device)")


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="the policy (TOML)")],
    mode: Annotated[Mode, typer.Option("--mode", help="monitor: count and report; protect: also drop")],
    host: Host = None, format: Format = OutputFormat.table, timeout: Timeout = 10.0, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    config: ConfigFile = None,
) -> None:
    """Check FILE and make it the probe's policy, in monitor or protect mode."""
    text = read_policy_file(file)
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    within_ms = round((timeout - reply_margin(timeout)) * 1000)
    body = {"text": text, "mode": mode.value, "source": file.name, "within_ms": within_ms,
            "deadline_ms": round(time.time() * 1000) + within_ms}
    reply = request(load_config(config), flags, host, "policy_apply", body, timeout)
    _print_summary(reply, format)


@app.command()
def show(
    host: Host = None, format: Format = OutputFormat.table, timeout: Timeout = 5.0, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    config: ConfigFile = None,
) -> None:
    """Print the probe's active policy, its mode and the devices it governs."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    reply = request(load_config(config), flags, host, "policy_show", {}, timeout)
    if format is OutputFormat.table and reply.get("text"):
        typer.echo(reply["text"].rstrip("\n"))
        typer.echo("")
    _print_summary(reply, format)


@app.command()
def off(
    host: Host = None, timeout: Timeout = 5.0, nats: Nats = None, nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Remove the probe's policy: every device is only counted again."""
    flags = NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key)
    request(load_config(config), flags, host, "policy_off", {}, timeout)
    typer.echo("policy off: devices are counted, nothing is judged or dropped")
