"""Benchmark: wall time and peak RSS of one collector run, next to the import floor measured in the same run.

    .venv/bin/python -m bench.run [--repeat 7]

Each row is the median of --repeat runs of the real CLI in a fresh process (the timer's mode), against the stand-in
NVML library and a simulated host: 8 GPUs, 4 whole and 4 in MIG mode with 7 instances each, N GPU processes spread
over the 32 units. The floor is `python -c "import pynvml, psutil"` with the same interpreter. "collect ms" is the
last run's own gpu_proc_collector_duration_seconds: the work without interpreter start-up and imports, which is
what each collection costs in the long-running --interval mode. Prints numbers; passes no judgement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.podsim import PodHost  # noqa: E402
from tests.simhost import GIB, Gpu, HostTree, mig_instance, proc, scenario, write_scenario  # noqa: E402

FAKE_NVML = REPO / "tests" / "fake_nvml"
GNU_TIME = "/usr/bin/time"  # Debian package "time"


def measure(cmd: Sequence[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median wall seconds and median peak RSS (MiB) of cmd, each run in a fresh process.

    The peak comes from GNU time: a child forked from this (large) Python process would carry this process's
    resident pages into its own high-water mark, across exec.
    """
    walls, rss = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run([GNU_TIME, "-f", "maxrss_kib=%M", *cmd], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, check=False)
        walls.append(time.perf_counter() - started)
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}: {stderr[-2000:]}")
        rss.append(int(stderr.rsplit("maxrss_kib=", 1)[1].split()[0]) / 1024)
    return statistics.median(walls), statistics.median(rss)


def collection_seconds(prom: Path) -> float:
    """The run's own gpu_proc_collector_duration_seconds: the collection without interpreter start and imports,
    i.e. what each collection costs in the long-running --interval mode."""
    for line in prom.read_text().splitlines():
        if line.startswith("gpu_proc_collector_duration_seconds "):
            return float(line.split()[1])
    raise SystemExit(f"no duration in {prom}")


def build_host(
    root: Path, processes: int, idle_host_processes: int = 0, pods: int = 0
) -> tuple[Path, HostTree]:
    """processes GPU processes over 8 GPUs (4 MIG x 7 instances); pods > 0 puts them in that many pods."""
    tree = HostTree(root / "host")
    podhost = PodHost(tree) if pods else None
    units: list[tuple[int, Optional[int]]] = [(g, None) for g in range(4)]
    units += [(g, s) for g in range(4, 8) for s in range(7)]
    placed: dict[tuple[int, Optional[int]], list[dict[str, object]]] = {u: [] for u in units}
    for n in range(processes):
        pid = 10_000 + n
        unit = units[n % len(units)]
        if podhost is not None:
            podhost.add_pod_process(pid, pod_index=n % pods, comm="python3")
        else:
            tree.add_process(pid, "python3", ["python3", "train.py"], start_ticks=5000 + n)
        placed[unit].append(proc(pid, GIB // 4))
    for n in range(idle_host_processes):
        tree.add_process(100_000 + n, "bash", ["bash"], start_ticks=100 + n)
    gpus = []
    for g in range(8):
        if g < 4:
            samples = [{"pid": p["pid"], "age_s": 1, "sm": 50} for p in placed[(g, None)]]
            gpus.append(Gpu(g, compute=placed[(g, None)], samples=samples))
        else:
            instances = [mig_instance(g, slot=s, gi=s + 7, ci=0, profile="1g.10gb", total_gib=10,
                                      compute=placed[(g, s)]) for s in range(7)]
            gpus.append(Gpu(g, mig=instances))
    if podhost is not None:
        podhost.finish()
    return write_scenario(root / "scenario.json", scenario(gpus)), tree


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="10,100,1000,5000")
    args = parser.parse_args(argv)
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} is missing: apt-get install time")
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    # As pip does when it installs the wheel: the timer's runs load bytecode, not source (this matters where
    # PYTHONDONTWRITEBYTECODE is set, as on the development machines).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "collector")], check=True)
    python = sys.executable
    env = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML)}
    floor_wall, floor_rss = measure([python, "-c", "import pynvml, psutil"], env, args.repeat)
    print(f"import floor (python -c 'import pynvml, psutil'): {floor_wall * 1000:.1f} ms, {floor_rss:.1f} MiB")
    print(f"{'case':<48} {'wall ms':>8} {'x floor':>8} {'peak MiB':>9} {'collect ms':>11}")
    rows: list[tuple[str, int, int, int]] = [(f"{n} GPU processes", n, 0, 0) for n in map(int, args.sizes.split(","))]
    rows += [("1000 GPU processes + 10000 idle host processes", 1000, 10_000, 0),
             ("1000 GPU processes in 500 pods (attribution)", 1000, 0, 500)]
    for label, n, idle, pods in rows:
        work = Path(tempfile.mkdtemp(prefix="gpc-bench-"))
        try:
            scenario_path, tree = build_host(work, n, idle, pods)
            run_env = {**env, "FAKE_NVML_SCENARIO": str(scenario_path)}
            (work / "textfile").mkdir()
            cmd = [python, "-m", "collector", "--textfile-dir", str(work / "textfile"), "--host-root",
                   str(tree.root), "--state-dir", str(work / "state")]
            wall, rss = measure(cmd, run_env, args.repeat)
            collect_ms = 1000 * collection_seconds(work / "textfile" / "gpu_processes.prom")
            print(f"{label:<48} {wall * 1000:>8.1f} {wall / floor_wall:>8.2f} {rss:>9.1f} {collect_ms:>11.1f}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
