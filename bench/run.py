"""Benchmark: wall time, CPU time and peak RSS of one collector run, next to the import floor measured in the same run.

    .venv/bin/python -m bench.run [--repeat 11]

Each row is the median of --repeat runs of the real CLI in a fresh process (the timer's mode), against the stand-in
NVML library and a simulated host: 8 GPUs, 4 whole and 4 in MIG mode with 7 instances each, N GPU processes spread
over the 32 units. The floor is `python -c "import pynvml, psutil"` with the same interpreter. The runs are
interleaved (one of each case per round, the floor included), so a load that comes and goes on a shared machine
touches every case alike and the ratios stay comparable. "collect ms" is the last run's own
gpu_proc_collector_duration_seconds: the work without interpreter start-up, imports and rendering, which is what
each collection costs in the long-running --interval mode.

The collector run is this checkout's (cwd and PYTHONPATH are the repository; checked before measuring), not an
installed copy. Prints the numbers, then each goal of docs/performance.md with its measured value, and exits 1
when one is missed, so a regression shows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.podsim import Pod, PodHost, pod_resources_server  # noqa: E402
from tests.support.simhost import (  # noqa: E402
    GIB,
    Gpu,
    HostTree,
    gpu_uuid,
    mig_instance,
    mig_uuid,
    proc,
    scenario,
    write_scenario,
)

FAKE_NVML = REPO / "tests" / "fake_nvml"
GNU_TIME = "/usr/bin/time"  # Debian package "time"
FLOOR = "import pynvml, psutil"
GRPC_FLOOR = "import pynvml, psutil, grpc, collector.attribution.podresources_v1_pb2"
SOCKET = "var/lib/kubelet/pod-resources/kubelet.sock"
UNITS: list[tuple[int, Optional[int]]] = [(g, None) for g in range(4)] + [(g, s) for g in range(4, 8) for s in range(7)]


@dataclass
class Case:
    label: str
    cmd: list[str]
    env: dict[str, str]
    prom: Optional[Path] = None
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    @property
    def peak(self) -> float:
        return statistics.median(self.rss)

    def run_once(self) -> None:
        """One run in a fresh process. The peak RSS comes from GNU time (a child forked from this large Python
        process would carry its resident pages into its own high-water mark across exec); wall and CPU time
        (user + sys, from wait4 on GNU time, which includes the run it waited for; GNU time itself prints only
        hundredths of a second) from here."""
        started = time.perf_counter()
        child = subprocess.Popen([GNU_TIME, "-f", "maxrss_kib=%M", *self.cmd], env=self.env, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert child.stderr is not None
        stderr = child.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        self.walls.append(time.perf_counter() - started)
        child.stderr.close()
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(self.cmd)} exited {child.returncode}: {stderr[-2000:]}")
        self.cpus.append(usage.ru_utime + usage.ru_stime)
        self.rss.append(int(stderr.rsplit("maxrss_kib=", 1)[1].split()[0]) / 1024)


def collection_seconds(prom: Path) -> float:
    """The run's own gpu_proc_collector_duration_seconds: the collection without interpreter start and imports,
    i.e. what each collection costs in the long-running --interval mode."""
    for line in prom.read_text().splitlines():
        if line.startswith("gpu_proc_collector_duration_seconds "):
            return float(line.split()[1])
    raise SystemExit(f"no duration in {prom}")


def build_host(root: Path, processes: int, idle_host_processes: int = 0, pods: int = 0
               ) -> tuple[Path, HostTree, list[Pod]]:
    """processes GPU processes over 8 GPUs (4 MIG x 7 instances); pods > 0 puts them in that many pods, each
    container allocated the GPUs or MIG instances its processes run on (what kubelet's List then answers)."""
    tree = HostTree(root / "host")
    podhost = PodHost(tree) if pods else None
    placed: dict[tuple[int, Optional[int]], list[dict[str, object]]] = {u: [] for u in UNITS}
    for n in range(processes):
        pid = 10_000 + n
        unit = UNITS[n % len(UNITS)]
        if podhost is not None:
            podhost.add_pod_process(pid, pod_index=n % pods, comm="python3")
            container = podhost.pods[n % pods].containers[0]
            uuid = gpu_uuid(unit[0]) if unit[1] is None else mig_uuid(unit[0], unit[1])
            resource = "nvidia.com/gpu" if unit[1] is None else "nvidia.com/mig-1g.10gb"
            container.devices.append((resource, [uuid]))
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
    return write_scenario(root / "scenario.json", scenario(gpus)), tree, podhost.pods if podhost else []


def check_checkout(python: str, env: dict[str, str]) -> None:
    """The runs must import this checkout's collector, not a copy installed elsewhere (an editable install of
    another worktree would otherwise win for a command started outside the repository)."""
    where = subprocess.run([python, "-c", "import collector; print(collector.__file__)"], env=env, cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(REPO):
        raise SystemExit(f"the runs would import {where}, not this checkout's collector ({REPO})")


@dataclass
class Goal:
    text: str
    value: str
    met: bool


UNIT_DEFAULTS = REPO / "roles/gpu_proc_collector/defaults/main.yml"
MEMORY_SHARE = 0.75  # of the unit's MemoryMax=, for the largest scale this benchmark runs


def memory_max_mib() -> float:
    """The role's default gpu_proc_collector_memory_limit (a Kubernetes quantity, the unit's MemoryMax=) in MiB."""
    import yaml  # noqa: PLC0415 - the benchmark's own dependency, not the collector's hot path

    quantity = str(yaml.safe_load(UNIT_DEFAULTS.read_text())["gpu_proc_collector_memory_limit"])
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1000 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, mib in sorted(units.items(), key=lambda u: -len(u[0])):
        if quantity.endswith(suffix):
            return float(quantity[:-len(suffix)]) * mib
    return float(quantity) / 2**20


def goals(cases: dict[str, Case], floor: Case) -> list[Goal]:
    """The targets of docs/performance.md, from the medians of this run."""
    pods, one, five, idle, ten = cases["pods"], cases["1000"], cases["5000"], cases["1000+idle"], cases["10"]
    scale, limit = cases["scale+kubelet"], memory_max_mib()
    return [
        Goal(f"5000 in 1000 pods + kubelet: peak RSS <= {MEMORY_SHARE:.0%} of MemoryMax={limit:g}M",
             f"{scale.peak:.1f} MiB ({scale.peak / limit:.0%}, largest of {len(scale.rss)}: {max(scale.rss):.1f})",
             max(scale.rss) <= MEMORY_SHARE * limit),
        Goal("1000 in 500 pods: wall <= 2.0x floor", f"{pods.wall / floor.wall:.2f}x", pods.wall <= 2.0 * floor.wall),
        Goal("1000 in 500 pods: peak RSS <= 40 MiB", f"{pods.peak:.1f} MiB", pods.peak <= 40),
        Goal("10 GPU processes: wall <= 1.5x floor", f"{ten.wall / floor.wall:.2f}x", ten.wall <= 1.5 * floor.wall),
        Goal("10,000 idle host processes add < 5 % (wall)", f"{100 * (idle.wall / one.wall - 1):+.1f} %",
             idle.wall < 1.05 * one.wall),
        Goal("5000 - floor <= 5.5 x (1000 - floor) (wall)",
             f"{(five.wall - floor.wall) / (one.wall - floor.wall):.2f} x",
             five.wall - floor.wall <= 5.5 * (one.wall - floor.wall)),
    ]


def kubelet_note(cases: dict[str, Case], floor: Case, grpc_floor: Case) -> str:
    """The pods case with kubelet's socket, not judged: importing grpc and the protobuf module alone is about as
    much as the floor itself (docs/performance.md says what would change that)."""
    kubelet, pods = cases["pods+kubelet"], cases["pods"]
    return (f"not judged: 1000 in 500 pods + kubelet socket: {kubelet.wall / floor.wall:.2f}x floor, "
            f"{kubelet.peak:.1f} MiB; of it, importing grpc + protobuf alone: "
            f"{(grpc_floor.wall - floor.wall) / floor.wall:.2f}x floor, "
            f"{grpc_floor.peak - floor.peak:.1f} MiB; the rest over the pods case without socket (the List call, "
            f"grpc's threads): {(kubelet.wall - pods.wall - grpc_floor.wall + floor.wall) * 1000:.1f} ms")


@contextlib.contextmanager
def hosts(sizes: Sequence[int]) -> Iterator[tuple[dict[str, Case], Path]]:
    """Every case's host, built before any is measured; the pods+kubelet case's List server runs throughout."""
    python = sys.executable
    base = {**os.environ, "LD_LIBRARY_PATH": str(FAKE_NVML), "PYTHONPATH": str(REPO)}
    work = Path(tempfile.mkdtemp(prefix="gpc-bench-"))
    rows: list[tuple[str, str, int, int, int]] = [(str(n), f"{n} GPU processes", n, 0, 0) for n in sizes]
    rows += [("1000+idle", "1000 GPU processes + 10000 idle host processes", 1000, 10_000, 0),
             ("pods", "1000 GPU processes in 500 pods", 1000, 0, 500),
             ("pods+kubelet", "1000 in 500 pods + kubelet pod-resources", 1000, 0, 500),
             ("scale+kubelet", "5000 in 1000 pods + kubelet pod-resources", 5000, 0, 1000)]
    cases: dict[str, Case] = {}
    try:
        with contextlib.ExitStack() as servers:
            for key, label, n, idle, pods in rows:
                root = work / key
                scenario_path, tree, pod_list = build_host(root, n, idle, pods)
                if key.endswith("+kubelet"):
                    servers.enter_context(pod_resources_server(tree.root / SOCKET, pod_list))
                (root / "textfile").mkdir()
                cmd = [python, "-m", "collector", "--textfile-dir", str(root / "textfile"), "--host-root",
                       str(tree.root), "--state-dir", str(root / "state")]
                cases[key] = Case(label, cmd, {**base, "FAKE_NVML_SCENARIO": str(scenario_path)},
                                  root / "textfile" / "gpu_processes.prom")
            # The trees were just written: flush them now, or their writeback lands in the measured runs' fsyncs
            # (the collector fsyncs its textfile and state), on whichever case runs then.
            os.sync()
            yield cases, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--sizes", default="10,100,1000,5000", help="GPU process counts (10, 1000 and 5000 are "
                        "the goals')")
    args = parser.parse_args(argv)
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} is missing: apt-get install time")
    subprocess.run(["make", "-s", "-C", str(FAKE_NVML)], check=True)
    # As pip does when it installs the wheel: the timer's runs load bytecode, not source (this matters where
    # PYTHONDONTWRITEBYTECODE is set in the environment).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "collector")], check=True)
    sizes = sorted({10, 1000, 5000} | set(map(int, args.sizes.split(","))))
    with hosts(sizes) as (cases, _):
        env = next(iter(cases.values())).env
        check_checkout(sys.executable, env)
        floor = Case("import floor", [sys.executable, "-c", FLOOR], env)
        grpc_floor = Case("import floor + grpc", [sys.executable, "-c", GRPC_FLOOR], env)
        everything = [floor, grpc_floor, *cases.values()]
        for case in everything:  # warm the page cache and the bytecode; not counted
            case.run_once()
            case.walls.clear()
            case.cpus.clear()
            case.rss.clear()
        for _ in range(args.repeat):
            for case in everything:
                case.run_once()
        print(f"import floor (python -c '{FLOOR}'): {floor.wall * 1000:.1f} ms wall, {floor.cpu * 1000:.1f} ms CPU, "
              f"{floor.peak:.1f} MiB (medians of {args.repeat}, interleaved)")
        print(f"{'case':<46} {'wall ms':>8} {'x floor':>8} {'CPU ms':>7} {'x floor':>8} {'peak MiB':>9} "
              f"{'collect ms':>11}")
        for case in [grpc_floor, *cases.values()]:
            collect = f"{1000 * collection_seconds(case.prom):>11.1f}" if case.prom else f"{'-':>11}"
            print(f"{case.label:<46} {case.wall * 1000:>8.1f} {case.wall / floor.wall:>8.2f} {case.cpu * 1000:>7.1f} "
                  f"{case.cpu / floor.cpu:>8.2f} {case.peak:>9.1f} {collect}")
        results = goals(cases, floor)
        state_file = cases["scale+kubelet"].cmd[-1] + "/state.json"
        print(f"state file at 5000 in 1000 pods: {os.path.getsize(state_file) / 2**20:.2f} MiB")
        note = kubelet_note(cases, floor, grpc_floor)
    print("goals:")
    for goal in results:
        print(f"  {'met   ' if goal.met else 'MISSED'} {goal.text:<48} {goal.value}")
    print(f"  {note}")
    return 0 if all(goal.met for goal in results) else 1


if __name__ == "__main__":
    sys.exit(main())
