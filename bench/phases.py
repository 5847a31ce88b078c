"""Where one timer run's time goes: each phase of a collection timed in fresh processes, on the bench's own hosts.

    .venv/bin/python -m bench.phases [--processes 1000] [--pods 500] [--repeat 11]

Builds the host bench/run.py builds for that case (bench.run.build_host), runs the real CLI once so that the
state of a previous run is there (as in every measured run of the bench), then runs the CLI --repeat times, each
in a fresh process with a timer wrapped around each phase (the functions collector.runner and
collector.collection call), and prints the median of each phase in ms, with the page faults of the run (each
first touch of a page, paid in system time). The wrappers add a little to each phase; compare phases, not totals
with bench/run.py. docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import FAKE_NVML, build_host  # noqa: E402

# (module, object in it or "", function, phase): what is timed, in the order printed
PHASES = [
    ("collector.state", "", "load", "state read"),
    ("collector.collection", "nvml", "read_snapshot", "NVML"),
    ("collector.collection", "", "_describe", "/proc"),
    ("collector.attribution.join", "Attributor", "attribute", "attribution"),
    ("collector.attribution.join", "", "parse_cgroup", "  of it: cgroup parsing"),
    ("collector.collection", "accounting", "account", "accounting"),
    ("collector.metrics", "", "_report_families", "families"),
    ("collector.metrics", "", "render", "text"),
    ("collector.runner", "", "write_output", "textfile written"),
    ("collector.state", "", "save", "state written"),
]


def child(root: str, out: str) -> None:
    """One run with the phases timed; prints them as JSON (ms, and the run's page faults)."""
    import gc  # noqa: PLC0415
    import importlib  # noqa: PLC0415
    import resource  # noqa: PLC0415
    import time  # noqa: PLC0415

    gc.disable()  # as collector/__main__.py imports
    from collector import cli  # noqa: PLC0415

    gc.freeze()
    gc.enable()
    spent: dict[str, float] = {}

    def timed(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[phase] = spent.get(phase, 0.0) + (time.perf_counter() - started) * 1000

        return wrapper

    for module, inside, name, phase in PHASES:
        owner: Any = importlib.import_module(module)
        if inside:
            owner = getattr(owner, inside)
        setattr(owner, name, timed(getattr(owner, name), phase))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    cli.main(["--textfile-dir", out, "--host-root", root, "--state-dir", f"{out}/state"])
    spent["the run (after imports)"] = (time.perf_counter() - started) * 1000
    spent["page faults (after imports)"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps(spent))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "collector")], check=True)
    work = Path(tempfile.mkdtemp(prefix="gpc-phases-"))
    try:
        scenario, tree, _ = build_host(work, args.processes, 0, args.pods)
        out = work / "textfile"
        out.mkdir()
        env = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "PYTHONPATH": str(REPO),
               "FAKE_NVML_SCENARIO": str(scenario)}
        cmd = [sys.executable, "-m", "bench.phases", "--child", str(tree.root), str(out)]
        runs = []
        for n in range(args.repeat + 1):  # the first writes the state the others read, and is not counted
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
            if n:
                runs.append(json.loads(done.stdout.splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.processes} GPU processes" + (f" in {args.pods} pods" if args.pods else "") +
          f", medians of {args.repeat} fresh runs:")
    for phase in [p for _, _, _, p in PHASES] + ["the run (after imports)", "page faults (after imports)"]:
        values = [run.get(phase, 0.0) for run in runs]
        print(f"  {phase:<30} {statistics.median(values):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
