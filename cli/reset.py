"""``connstats reset``: remove what a stopped probe left counting, when no probe will adopt it."""
from __future__ import annotations

import typer

from connstats.probe.contract import ConfigError
from connstats.probe.kernel.leftovers import leftovers
from connstats.probe.kernel.leftovers import reset as reset_instance
from connstats.probe.kernel.pins import PinnedInstance

from .options import ConfigFile, load_config

app = typer.Typer()


@app.command()
def reset(
    all_instances: bool = typer.Option(False, "--all", help="every state directory's pinned state "
                                       "that no running probe owns, not only this one's"),
    config: ConfigFile = None,
) -> None:
    """Detach the classifier that a stopped probe left counting (--on-exit keep, or a crash)
    and unpin its maps. Refuses while a probe owns them. The counts made since that probe
    stopped are dropped: to publish them instead, start the probe again."""
    cfg = load_config(config)
    if all_instances:
        targets = [found.instance for found in leftovers() if not found.owner]
    else:
        instance = PinnedInstance.for_state_dir(cfg.state_dir())
        if not instance.path.exists():
            raise ConfigError(f"nothing is pinned for state directory {cfg.state_dir()}; "
                              "`connstats reset --all` looks at every state directory")
        targets = [instance]
    if not targets:
        typer.echo("nothing to reset: no pinned state without a running probe")
    for instance in targets:
        detached = reset_instance(instance)
        typer.echo(f"removed connstats filters from {len(detached)} device(s) and unpinned {instance.path}")
