"""How long a large policy takes to compile (parse, resolve, install into the kernel's
tables), and how late the probe's event loop runs meanwhile (the compile in a worker
thread, as the policy service runs it; a 10 ms ticker on the loop measures its lag).

With ``--against DIR`` the same is measured, in the same run, with the ``probe`` package
found in DIR (e.g. ``git archive main probe | tar -x -C DIR/oldcs``, DIR/oldcs/__init__.py
empty): before and after as a ratio on one machine.

    sudo .venv/bin/python tests/bench/bench_policy_compile.py [PREFIXES ...] [--against DIR]
"""
import asyncio
import importlib
import ipaddress
import sys
import time


def policy_text(prefixes: int) -> str:
    """``prefixes`` /24s in one group, a device group, and a rule between them."""
    cidrs = ", ".join(f'"{ipaddress.IPv4Address(0x0A000000 + 256 * i)}/24"' for i in range(prefixes))
    return (f'[groups]\nfar = {{ cidrs = [{cidrs}] }}\nweb = {{ ifaces = ["veth-web*"] }}\n\n'
            '[[allow]]\nfrom = "web"\nto = "far"\nproto = "tcp"\nports = [443]\n')


def modules(package: str):
    load = lambda name: importlib.import_module(f"{package}.{name}")  # noqa: E731
    if hasattr(load("probe.kernel"), "__path__"):  # the probe in rooms (issue 19)
        kernel, model = load("probe.kernel.loader"), load("probe.contract.policy_file")
    else:  # a tree from before
        kernel, model = load("probe.kernel"), load("probe.policy.model")
    return kernel, model, load("probe.policy.resolve"), load("probe.policy.tables")


async def compile_once(package: str, program, text: str) -> dict[str, float]:
    kernel, model, resolve, tables = modules(package)
    installer = tables.PolicyTables(program)
    times: dict[str, float] = {}
    lag = 0.0

    def work():
        started = time.perf_counter()
        policy = model.parse_policy(text)
        times["parse"] = time.perf_counter() - started
        resolved = resolve.resolve(policy, [], [])
        times["resolve"] = time.perf_counter() - started - times["parse"]
        installer.install(resolved, "monitor")
        times["total"] = time.perf_counter() - started
        times["install"] = times["total"] - times["parse"] - times["resolve"]

    async def ticker():
        nonlocal lag
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - before - 0.01)

    ticking = asyncio.create_task(ticker())
    await asyncio.to_thread(work)
    ticking.cancel()
    installer.off()
    return times | {"loop lag": lag}


def main(argv: list[str]) -> None:
    against = argv[argv.index("--against") + 1] if "--against" in argv else None
    counts = [int(a) for a in argv if a.isdigit()] or [20_000]
    packages = ["connstats"] + (["oldcs"] if against else [])
    if against:
        sys.path.insert(0, against)
    program = modules("connstats")[0].load_classifier()
    try:
        for count in counts:
            text = policy_text(count)
            for package in packages:
                times = asyncio.run(compile_once(package, program, text))
                print(f"{package:9} {count:6,} prefixes: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()),
                      flush=True)
    finally:
        program.close()


if __name__ == "__main__":
    main(sys.argv[1:])
