"""``connstats policy learn``: print the policy (TOML) that allows the traffic in the store."""
from __future__ import annotations

import ipaddress
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from connstats.probe.contract import ConfigError
from connstats.sink.history import parse_time
from connstats.sink.policy_learn import PeerSettings, learn_policy, learn_query, learned_policy_text

from .history import query_store
from .options import ConfigFile, InfluxBucket, InfluxOrg, InfluxUrl, Store, load_config
from .render import rfc3339


class Peers(str, Enum):
    world = "world"
    prefix = "prefix"


def learn(
    since: Annotated[str, typer.Option(metavar="WHEN", help="start: a duration ago (15m, 2h, 1d) or RFC 3339")] = "24h",
    until: Annotated[str, typer.Option(metavar="WHEN", help="end: a duration ago, RFC 3339, or now")] = "now",
    host: Annotated[Optional[str], typer.Option(
        "--host", metavar="NAME", help="the probe's host whose traffic to learn (default: this host)")] = None,
    peers: Annotated[Peers, typer.Option(
        help="outside peers as one 'world' group or a group per prefix")] = Peers.world,
    prefix4: Annotated[int, typer.Option(metavar="BITS", help="IPv4 prefix length with --peers prefix")] = 24,
    prefix6: Annotated[int, typer.Option(metavar="BITS", help="IPv6 prefix length with --peers prefix")] = 64,
    host_address: Annotated[Optional[list[str]], typer.Option(
        "--host-address", metavar="ADDR", help="an address of the host (the group 'host'), repeatable "
        "(default: this host's addresses when learning this host, else none)")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                   help="write the policy here [default: stdout]")] = None,
    store: Store = None, influx_url: InfluxUrl = None, influx_org: InfluxOrg = None,
    influx_bucket: InfluxBucket = None, config: ConfigFile = None,
) -> None:
    """Print the policy with the fewest rules that allows all traffic seen in the store."""
    cfg = load_config(config)
    now = time.time_ns()
    name = cfg.host(host)
    query = learn_query(parse_time(since, now), parse_time(until, now), name)
    settings = PeerSettings(peers.value, prefix4, prefix6)
    own = host_addresses(host_address) if host_address else own_addresses() if name == cfg.host() else []
    rows = query_store(cfg, store, query, (influx_url, influx_org, influx_bucket))
    learned = learn_policy(rows, host_addresses=own, peers=settings)
    span = f"{rfc3339(query.since, digits=0)} to {rfc3339(query.until, digits=0)}"
    if not learned.policy.groups:
        raise ConfigError(f"the store holds no traffic of host {name!r} from {span}; check --host and --since")
    text = learned_policy_text(learned, [
        f"connstats policy learn: host {name}, {span}",
        f"allows the {_count(learned.connections, 'connection')} ({learned.bytes:,} bytes) seen, "
        f"with {_count(len(learned.policy.rules), 'rule')}",
    ])
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}; check the path") from exc


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def host_addresses(texts: list[str]) -> list[str]:
    for text in texts:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"--host-address {text!r} is not an IP address; write e.g. 192.0.2.10") from None
    return texts


def own_addresses() -> list[str]:
    """This host's addresses (the root network namespace's, by netlink): the ``host`` group."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
