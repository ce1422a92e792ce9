"""Benchmarks of two git revisions, side by side in one run: medians and new/old ratios.

Each revision gets a detached git worktree (in a temp dir, removed on exit; an existing
``/work/bench-<short hash>`` at that commit is reused and left alone) and its own venv
(``pip install -e '.[test]'`` there, as ``make bench`` has it). Then every bench runs in
rounds, old and new back to back (the order flips every round), each in its own worktree
(cwd, ``PYTHONPATH=.``, its venv).
A bench missing at one revision runs from the other revision's file with that revision's
package (only meaningful for a bench written for both layouts, like bench_policy_compile).

Every number followed by a unit (``12.3 ms``, ``481,204 records/s``, ``0.086 CPU-s``,
``7.7x``) is a figure, and so is every unitless number that changes between runs; figures
are matched between runs by their line's text with the numbers removed (and the how-many-th
such line it is). Other numbers that are the same in every run (sizes, counts) are left out.

    PYTHONPATH=. .venv/bin/python tests/bench/side_by_side.py [--old d8f8401] [--new HEAD]
        [--rounds 3] [BENCH[:ARGS] ...]        e.g. classifier:200000 "pipeline:--intervals 2"
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# small but meaningful sizes: all of these, 3 rounds, take 12-15 minutes on 2 shared cores
DEFAULT_BENCHES = [
    "web_live", "totals", "metrics", "alerts", "line_protocol:65536 3", "drain", "classifier:200000",
    "policy:200000", "pipeline:--intervals 2", "probe_cpu", "policy_compile:5000",
]
NUMBER = r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?"
FIGURE = re.compile(rf"({NUMBER})(?:\s?([%x]|[A-Za-zµ]+(?:-s)?(?:/[A-Za-z]+)?)(?![\w/]))?")
# Debian's python3, whose site-packages has bcc (python3-bpfcc), as the Makefile has it
VENV = ("test -x .venv/bin/python || /usr/bin/python3 -m venv --system-site-packages .venv; "
        ".venv/bin/pip install -q --disable-pip-version-check -e '.[test]'; .venv/bin/python -c 'import bcc'")
TIME_UNITS = {"ns", "µs", "us", "ms", "s", "CPU-s", "CPU-ms"}


def better(unit: str) -> str:
    """Which way is better for a unit: time lower, rate higher, anything else: read the line."""
    if unit.split("/")[0] in TIME_UNITS:  # also ns/packet
        return "lower"
    if unit.endswith("/s"):
        return "higher"
    return "?"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def start(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """In a process group of its own: stopped whole (nats-server, sinks, pip) by stop()."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGINT first (a bench's finally blocks clean up its namespaces), SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float | None = None) -> str:
    """Its stdout; on a non-zero exit, a RuntimeError with the end of its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    if proc.returncode:
        tail = "\n".join((out + err).splitlines()[-15:])
        raise RuntimeError(f"exit status {proc.returncode} in {proc.args}:\n{tail}")
    return out


def checkout(repo: Path, rev: str, tmp: Path, made: list[Path]) -> Path:
    """A worktree of ``rev``: /work/bench-<hash> if it is there, else a new one in ``tmp``."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=repo)
    short = commit[:7]
    cached = Path(f"/work/bench-{short}")
    if cached.is_dir():
        if git("rev-parse", "HEAD", cwd=cached) != commit:
            sys.exit(f"{cached} is not at {commit}")
        tree = cached
    else:
        tree = tmp / f"{rev.replace('/', '_')}-{short}"
        git("worktree", "add", "--detach", "--quiet", str(tree), commit, cwd=repo)
        made.append(tree)
    print(f"{rev} = {short} in {tree}", file=sys.stderr, flush=True)
    return tree


def build(trees: list[Path]) -> None:
    """Each worktree's venv with the test extras (the fixtures some benches use import pytest),
    all at once, the same way at every revision; then check that each imports its own tree."""
    makes = [start(["sh", "-ec", VENV], tree) for tree in trees]
    try:
        for make in makes:
            finish(make)
    finally:
        for make in makes:
            stop(make)
    for tree in trees:
        code = "import connstats.probe, connstats.sink; print(connstats.probe.__file__, connstats.sink.__file__)"
        for where in finish(start([str(tree / ".venv/bin/python"), "-c", code], tree)).split():
            if not Path(where).resolve().is_relative_to(tree.resolve()):
                sys.exit(f"{tree}'s venv imports {where}, not its worktree's")


def figures(bench: str, out: str) -> dict[tuple, tuple[str, float, str, str]]:
    """(bench, line without numbers, its occurrence, figure index) -> (label, value, unit, raw text)."""
    found, seen = {}, {}
    for line in out.splitlines():
        line = " ".join(line.split())
        matches = list(FIGURE.finditer(line))
        if not matches:
            continue
        template = re.sub(NUMBER, "#", line)
        seen[template] = seen.get(template, -1) + 1
        for index, match in enumerate(matches):
            unit = match.group(2) or ""
            label = line[:match.start()]
            for other in reversed(matches[:index]):  # earlier measurements as "…", counts as they are
                if better(other.group(2) or "") != "?" or other.group(2) in ("x", "%") or "." in other.group(1):
                    label = label[:other.start(1)] + "…" + label[other.end(1):]
            found[(bench, template, seen[template], index)] = (f"{label}#{'' if unit in ('x', '%') else ' '}{unit}", float(match.group(1).replace(",", "")),
                                                               unit, match.group(1))
    return found


def run(tree: Path, script: Path, args: list[str]) -> str:
    return finish(start([str(tree / ".venv/bin/python"), str(script), *args], tree, os.environ | {"PYTHONPATH": "."}),
                  timeout=900)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:22] + " … " + text[-(width - 25):]


def report(old: dict, new: dict, old_rev: str, new_rev: str) -> None:
    """One row per figure: medians, new/old, each side's spread and the per-round ratios' range."""
    print(f"\nold = {old_rev}, new = {new_rev}; medians of the rounds; spread = (max - min) / median of one side;")
    print("ratio range = new/old of each round's pair (run back to back). better: lower for times, higher for rates,")
    print("'?' where the line says (ratios such as 'x', unitless columns: see the bench's header).\n")
    head = f"{'bench':15} {'figure':58} {'old':>11} {'new':>11} {'new/old':>8} {'better':>6}  {'spread old/new':>14}  ratio range"
    print(head + "\n" + "-" * len(head))
    for key in [k for k in old if k in new]:
        label, unit = old[key][0][0], old[key][0][2]
        a, b = [v[1] for v in old[key]], [v[1] for v in new[key]]
        if len({v[3] for v in old[key] + new[key]}) == 1 and better(unit) == "?":
            continue  # a size or a count, the same in every run
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = f"{mb / ma:8.3f}" if ma else f"{'-':>8}"
        pairs = [y / x for x, y in zip(a, b, strict=False) if x]
        spread = "/".join(f"{(max(v) - min(v)) / abs(m) * 100:.0f}%" if m else "-" for v, m in ((a, ma), (b, mb)))
        span = f"{min(pairs):.2f}..{max(pairs):.2f}" if pairs else "-"
        print(f"{key[0]:15} {shorten(label, 58):58} {ma:11.4g} {mb:11.4g} {ratio} {better(unit):>6}  {spread:>14}  {span}")
    for key in old.keys() ^ new.keys():
        side = "old" if key in old else "new"
        print(f"{key[0]:15} only in {side}: {(old.get(key) or new.get(key))[0][0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="d8f8401")
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("benches", nargs="*", default=DEFAULT_BENCHES, help="name[:args], e.g. 'classifier:200000'")
    opts = parser.parse_args()
    repo = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the worktrees go on kill too
    tmp, made = Path(tempfile.mkdtemp(prefix="connstats-sbs-")), []
    try:
        trees = {"old": checkout(repo, opts.old, tmp, made), "new": checkout(repo, opts.new, tmp, made)}
        print("building the venvs", file=sys.stderr, flush=True)
        build(list(trees.values()))
        plan = []  # (name, args, {side: script})
        for spec in opts.benches:
            name, _, args = spec.partition(":")
            scripts = {side: next((s for s in (t / f"tests/bench/bench_{name}.py" for t in (tree, *trees.values()))
                                   if s.exists()), None) for side, tree in trees.items()}
            if None in scripts.values():
                sys.exit(f"no tests/bench/bench_{name}.py at either revision")
            plan.append((name, args, scripts))
        results = {"old": {}, "new": {}}
        failed = []  # by name: a bench that fails once is left out of the table
        for round_ in range(opts.rounds):
            for name, args, scripts in plan:
                if name in failed:
                    continue
                for side in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                    script = scripts[side]
                    origin = "" if script.is_relative_to(trees[side]) else " (the other revision's file)"
                    print(f"round {round_ + 1}/{opts.rounds} {side} {name} {args}{origin}", file=sys.stderr, flush=True)
                    try:
                        out = run(trees[side], script, shlex.split(args))
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        print(f"  {name} failed ({side}): {error}", file=sys.stderr)
                        failed.append(name)
                        break
                    for key, value in figures(name, out).items():
                        results[side].setdefault(key, []).append(value)
        old, new = ({k: v for k, v in results[side].items() if k[0] not in failed} for side in ("old", "new"))
        report(old, new, opts.old, opts.new)
        if failed:
            print(f"\nfailed (left out): {', '.join(failed)}")
        return 1 if failed else 0
    finally:
        for tree in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
