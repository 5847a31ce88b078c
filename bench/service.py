"""Benchmark of the long-running mode (--interval): what one cycle and one sampling tick cost, and whether memory
stays flat over many cycles with processes coming and going.

    .venv/bin/python -m bench.service [--cycles 10000]

It runs the service's own pieces in one process, as the service does: one NVML session kept initialised
(nvml.Session), a collection + render + atomic write per cycle (runner.one_collection), and utilisation ticks
(Session.tick) in between, against the stand-in NVML with a simulated host. The stand-in re-reads its scenario
when the file changes, so processes start and exit under the live session as they do under a real driver.

Goals (from the issue; medians, not timed tests): a cycle at 100 GPU processes at most 5 ms, at 1,000 at most
30 ms; a tick at 1,000 at most 2 ms; RSS after --cycles cycles within 2 MiB of RSS after 100. Prints the numbers
and exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

gc.disable()  # the imports under collector/__main__.py's settings: no collection while importing, then frozen
import pynvml  # noqa: E402

from collector import metrics, nvml, runner, state  # noqa: E402
from collector.settings import Settings  # noqa: E402
from tests.support.simhost import GIB, Gpu, HostTree, proc, scenario, update_scenario, write_scenario  # noqa: E402

gc.freeze()
gc.enable()

FAKE_NVML = REPO / "tests" / "fake_nvml"
GOALS_MS = {"cycle at 100": 5.0, "cycle at 1000": 30.0, "tick at 1000": 2.0}
RSS_GOAL_MIB = 2.0


def document(pids: list[int], sampled: bool = True) -> dict[str, object]:
    """8 whole GPUs, the PIDs spread over them, each busy in the latest sample period."""
    gpus = []
    for index in range(8):
        mine = pids[index::8]
        samples = [{"pid": p, "age_s": 0.01, "sm": 10 + p % 80} for p in mine] if sampled else []
        gpus.append(Gpu(index, compute=[proc(p, GIB) for p in mine], samples=samples))
    return scenario(gpus)


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Service:
    """The service's pieces in this process, on a simulated host with a pool of processes."""

    def __init__(self, workdir: Path) -> None:
        tree = HostTree(workdir / "host")
        self.pool = list(range(10_000, 13_000))
        for pid in self.pool:
            tree.add_process(pid, "python3")
        self.scenario = Path(os.environ["FAKE_NVML_SCENARIO"])
        self.settings = Settings(textfile_dir=str(workdir / "textfile"), host_root=str(tree.root),
                                 state_dir=str(workdir / "state"), interval=60.0, log_level="error")
        (workdir / "textfile").mkdir(exist_ok=True)
        self.session = nvml.Session(long_running=True)
        self.series = metrics.SeriesCache()
        self.previous = state.State()

    def show(self, pids: list[int], sampled: bool = True) -> None:
        """The driver now lists these PIDs, with fresh samples; loaded now, not inside the next measurement."""
        update_scenario(self.scenario, document(pids, sampled))
        # Any call makes the stand-in reload a changed scenario; before the first cycle, the session's init reads it.
        with contextlib.suppress(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlSystemGetDriverVersion()

    def cycle(self) -> None:
        code, self.previous = runner.one_collection(self.settings, self.previous, self.session, self.series)
        if code != 0:
            raise SystemExit(f"a cycle failed with exit code {code}")

    def cycle_ms(self, pids: list[int], repeat: int) -> float:
        self.show(pids)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            self.cycle()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    def tick_ms(self, pids: list[int], repeat: int) -> float:
        times = []
        for _ in range(repeat):
            self.show(pids)  # every tick finds a fresh entry per process, as a busy GPU's would
            started = time.perf_counter()
            self.session.tick()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


def child(workdir: Path, cycles: int) -> int:
    """Runs inside the process that has the stand-in NVML on its library path."""
    runner.tune_gc()  # as runner.serve does
    service = Service(workdir)
    pool = service.pool
    service.cycle_ms(pool[:100], 3)  # warm: imports, first NVML init, first GPM and /proc reads
    results = {"cycle at 100": service.cycle_ms(pool[:100], 21), "cycle at 1000": service.cycle_ms(pool[:1000], 21),
               "tick at 1000": service.tick_ms(pool[:1000], 21)}
    failures = []
    for name, value in results.items():
        goal = GOALS_MS[name]
        print(f"{name:<16} {value:8.2f} ms   goal <= {goal:g} ms   {'ok' if value <= goal else 'MISSED'}")
        if value > goal:
            failures.append(name)

    after_100, after_all = memory(service, cycles)
    grew = after_all - after_100
    print(f"RSS after 100 cycles {after_100:.1f} MiB, after {cycles}: {after_all:.1f} MiB "
          f"(+{grew:.2f} MiB, goal <= {RSS_GOAL_MIB:g})   {'ok' if grew <= RSS_GOAL_MIB else 'MISSED'}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    if grew > RSS_GOAL_MIB:
        failures.append("memory")
    service.session.close()
    return 1 if failures else 0


def memory(service: Service, cycles: int) -> tuple[float, float]:
    """RSS after 100 and after `cycles` cycles of 50 processes, a tenth of them replaced every cycle."""
    window = 50
    after_100 = 0.0
    for n in range(cycles):
        start = (n * 5) % (len(service.pool) - window)
        service.show(service.pool[start:start + window], sampled=n % 2 == 0)
        service.cycle()
        service.session.tick()
        if n == 99:
            after_100 = rss_mib()
    return after_100, rss_mib()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child), args.cycles)
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    with tempfile.TemporaryDirectory(prefix="gpc-bench-service-") as tmp:
        scenario_path = write_scenario(Path(tmp) / "scenario.json", document([]))
        env = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "FAKE_NVML_SCENARIO": str(scenario_path)}
        return subprocess.run([sys.executable, "-m", "bench.service", "--child", tmp, "--cycles", str(args.cycles)],
                              env=env, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
