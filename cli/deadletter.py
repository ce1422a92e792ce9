"""``connstats deadletter list|replay``: the messages the sink dead-lettered, shown and replayed.

Reading and replaying are ``connstats.sink.deadletters``; ``replay`` sends each dead letter
back to its flow subject, so that the running sink stores it, and deletes it from
``CONNSTATS_DEADLETTER``: a second replay finds nothing to do.
"""
from __future__ import annotations

import asyncio
import time
from typing import Annotated, Optional

import typer

from connstats.probe.contract import connect, host_of_subject
from connstats.sink.deadletters import DeadLetter, read_dead_letters
from connstats.sink.deadletters import replay as replay_letters
from connstats.sink.history import parse_time

from .options import ConfigFile, Format, Nats, NatsCreds, NatsFlags, OutputFormat, TlsCa, TlsCert, TlsKey, load_config
from .render import Column, render

app = typer.Typer(name="deadletter", no_args_is_help=True,
                  help="Messages the sink could not store or decode: list them, replay them once the "
                       "cause is fixed.")

Since = Annotated[Optional[str], typer.Option(
    metavar="WHEN", help="only those dead-lettered since: a duration ago (15m, 2h, 1d) or RFC 3339 [default: all]")]
Reason = Annotated[Optional[str], typer.Option(
    metavar="TEXT", help="only those whose reason class is TEXT (undecodable, wrong_subject, store_refused, "
    "store_failed) or whose reason contains it, e.g. 'disk is full'")]

TABLE_COLUMNS = (  # under 80 columns: the host of the subject, the reason cut (json and csv carry it whole)
    Column("seq", "SEQ", "int"), Column("time", "DEAD-LETTERED", "time"), Column("host", "HOST", width=12),
    Column("size", "BYTES", "int"), Column("reason", "REASON", width=30),
)
DATA_COLUMNS = (
    Column("seq", "seq"), Column("time", "time", "time"), Column("subject", "subject"),
    Column("origin_seq", "origin_seq"), Column("class", "class"), Column("reason", "reason"), Column("size", "size"),
)


def _selected(flags: NatsFlags, config: Optional[str], since: Optional[str], reason: Optional[str],
              then=None, role: str = "admin"):
    """The dead letters of ``since`` and ``reason``; ``then(js, letters)`` runs on the same connection
    (``role``: the login on the embedded server of ``up``)."""
    options = flags.options(load_config(config), name="connstats-deadletter", role=role)
    since_ns = parse_time(since, time.time_ns()) if since else None

    async def run():
        nc = await connect(options)
        try:
            js = nc.jetstream()
            letters = await read_dead_letters(js, since_ns, reason)
            return letters if then is None else await then(js, letters)
        finally:
            await nc.close()

    return asyncio.run(run())


@app.command("list")
def list_(
    since: Since = None, reason: Reason = None, format: Format = OutputFormat.table, nats: Nats = None,
    nats_creds: NatsCreds = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    config: ConfigFile = None,
) -> None:
    """The dead letters in CONNSTATS_DEADLETTER, oldest first: when, from where, why."""
    letters: list[DeadLetter] = _selected(NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), config, since,
                                          reason)
    render([{**letter.row(), "host": _host(letter.subject)} for letter in letters], TABLE_COLUMNS if format is OutputFormat.table else DATA_COLUMNS,
           format, empty="no dead letter")


def _host(subject: str) -> str:
    """The host of a flow subject; the subject as it is if it is none."""
    host = host_of_subject(subject, "flows")
    return subject if host is None else host


@app.command()
def replay(
    since: Since = None, reason: Reason = None, nats: Nats = None, nats_creds: NatsCreds = None,
    tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None, config: ConfigFile = None,
) -> None:
    """Send the dead letters back to their flow subjects for the sink to store, then delete them.

    Fix the cause first (free disk space, a store setting): a message that fails again
    becomes a dead letter again. A message already stored is stored once."""
    done = _selected(NatsFlags(nats, nats_creds, tls_ca, tls_cert, tls_key), config, since, reason,
                     replay_letters, role="replay")
    for letter, why in done.skipped:
        typer.echo(f"skipped dead letter {letter.seq}: {why}", err=True)
    if not done.replayed:
        typer.echo("no dead letter to replay" + (f" ({len(done.skipped)} skipped)" if done.skipped else ""))
        return
    subjects = sorted({letter.subject for letter in done.replayed})
    count = len(done.replayed)
    typer.echo(f"replayed {count} dead letter{'s' if count != 1 else ''} ({sum(len(x.data) for x in done.replayed)} bytes) to "
               f"{', '.join(subjects[:3])}{' ...' if len(subjects) > 3 else ''}; the sink stores them, "
               "and they left CONNSTATS_DEADLETTER")
