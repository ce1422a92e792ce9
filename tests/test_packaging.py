"""The distribution installs connstats.probe/.sink/.cli and nothing at the top level but connstats."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_only_the_connstats_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("connstats-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("connstats-")}
    assert top == {"connstats"}
    packages = {name.split("/")[1] for name in names if name.startswith("connstats/")}
    assert packages == {"probe", "sink", "cli"}
    assert {"flows.bpf.c", "flows_structs.h", "flows_parse.h", "flows_policy.h", "flows_count.h"} <= {
        n.removeprefix("connstats/probe/kernel/") for n in names}  # the classifier and its headers
    static = {n.removeprefix("connstats/sink/web/static/") for n in names if n.startswith("connstats/sink/web/static/")}
    assert static == {p.name for p in (ROOT / "sink" / "web" / "static").iterdir()}  # the web page's files
    sources = {f"connstats/{path.relative_to(ROOT).as_posix()}" for top in ("probe", "sink", "cli")
               for path in (ROOT / top).rglob("__init__.py")}
    assert sources <= set(names)  # every package, the generated containerd API's too (pyproject lists them)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "connstats = connstats.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
