"""What the long-running mode keeps from one write to the next (collector.metrics.SeriesCache: each process's
rendered series) never changes what it writes: every cycle's file is the one a process starting afresh would write
from the same NVML answer, /proc and state, and nothing is kept for a process that is gone.

The collections run in this process, on a simulated host tree, with a session that answers the snapshots given
(collector.nvml.Session's read), so each cycle can be collected twice, with the cache and without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pytest

from collector import collection
from collector.metrics import SeriesCache
from collector.model import Device, GpuProcess, NvmlSnapshot
from collector.settings import Settings
from collector.state import State
from tests.conftest import samples
from tests.support.simhost import BTIME, GIB, H100, H100_MEMORY, HostTree, gpu_uuid

NOW = BTIME + 100_000.0  # the simulated processes started at BTIME + 1234.56 (start_ticks 123456)
SERVICE = "0::/system.slice/{}.service\n"


def gpu(index: int) -> Device:
    return Device(label=str(index), index=index, uuid=gpu_uuid(index), name=H100, memory_total=H100_MEMORY,
                  memory_used=40 * GIB, minor=index)


def busy(pid: int, index: int = 0, memory: int = GIB, sm: Optional[float] = 30.0) -> GpuProcess:
    """A process as the long-running mode's read lists it: its SM % integrated over the interval."""
    return GpuProcess(pid=pid, device=gpu(index), used_memory=memory, sm_utilization=sm,
                      active=None if sm is None else sm > 0, sm_busy_seconds=None if sm is None else sm / 100 * 60,
                      window_start=NOW - 60)


class Answers:
    """An NVML session that answers what the test says the driver lists now."""

    def __init__(self) -> None:
        self.processes: tuple[GpuProcess, ...] = ()

    def read(self, devices: object, last_seen_us: object, now_us: int) -> NvmlSnapshot:
        units = tuple(gpu(i) for i in range(2))
        return NvmlSnapshot(driver_version="580.95.05", devices=units, processes=self.processes, failed_gpus=(),
                            listed_at=now_us / 1_000_000, energy_mj={d.uuid: 5_000_000 + now_us // 1000
                                                                     for d in units})


class Service:
    """Cycles of the long-running mode: each collected with the cache and, for comparison, without it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tree = HostTree(tmp_path / "host")
        self.settings = Settings(textfile_dir=str(tmp_path / "textfile"), host_root=str(self.tree.root),
                                 state_dir=str(tmp_path / "state"), interval=60.0)
        self.nvml = Answers()
        self.cache = SeriesCache()
        self.previous = State()
        self.now = NOW

    def cycle(self, *processes: GpuProcess, **settings: object) -> str:
        """One write with the cache; asserts that a fresh process writes the same file and state. Returns it."""
        self.nvml.processes = processes
        self.settings = self.settings._replace(**settings)
        self.now += 60

        def collect(series: Optional[SeriesCache]) -> collection.Outcome:
            return collection.collect(self.settings, self.previous, clock=lambda: self.now, session=self.nvml,  # type: ignore[arg-type]
                               series=series)

        kept, fresh = collect(self.cache), collect(None)
        assert kept.ok, kept.text.decode()
        assert without_duration(kept.text) == without_duration(fresh.text)
        assert kept.state == fresh.state
        self.previous = kept.state
        return kept.text.decode()


def without_duration(text: bytes) -> bytes:
    """The file without the one sample that measures the collection itself."""
    return re.sub(rb"(?m)^gpu_proc_collector_duration_seconds .*\n", b"", text)


def owners(text: str, pid: int) -> set[tuple[str, str]]:
    return {(labels["owner_kind"], labels["owner"]) for labels, _ in samples(text)["gpu_process_memory_bytes"]
            if labels["pid"] == str(pid)}


def sm_seconds(text: str, pid: int) -> float:
    return next(v for labels, v in samples(text)["gpu_process_sm_seconds_total"] if labels["pid"] == str(pid))


def labels_of(text: str, metric: str, pid: int) -> list[dict[str, str]]:
    return [labels for labels, _ in samples(text).get(metric, []) if labels["pid"] == str(pid)]


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return Service(tmp_path)


def test_cached_cycles_write_the_file_a_fresh_process_would(service: Service) -> None:
    """Processes come and go, change memory and status (both labels of gpu_process_info), are not measurable, have
    names that need escaping; command lines are exported from some cycle on. Every cycle's file is byte for byte
    the one written without the cache (Service.cycle)."""
    tree = service.tree
    tree.add_process(100, "python3", cgroup=SERVICE.format("train"))
    tree.add_process(101, 'we"ird\\name\n', cgroup=SERVICE.format("we\"ird"))
    tree.add_process(102, "a-very-long-program-name", ["/opt/a-very-long-program-name", "--token=x"])
    service.cycle(busy(100), busy(101, sm=0.0))
    service.cycle(busy(100, memory=2 * GIB), busy(101, sm=50.0), busy(102, index=1))
    service.cycle(busy(100, memory=2 * GIB, sm=0.0), busy(102, index=1, sm=None))
    service.cycle(busy(100), busy(101), busy(102, index=1), command_args=True)
    text = service.cycle(busy(101), busy(102, index=1, memory=3 * GIB), command_args=True)
    assert labels_of(text, "gpu_process_info", 101)[0]["command"] == 'we"ird\\name\n'
    assert labels_of(text, "gpu_process_info", 102)[0]["gpu_memory"] == "3072MiB"
    assert labels_of(text, "gpu_process_command_info", 102)[0]["command"] == "a-very-long-program-name"


def test_a_reused_pid_does_not_keep_the_old_processes_owner(service: Service) -> None:
    """PID 200 exits and the PID goes to a new process (a later start time) of another unit, with the same
    name: the new one's series name its own owner, and its counters start afresh."""
    service.tree.add_process(200, "python3", cgroup=SERVICE.format("old"), start_ticks=123456)
    for _ in range(3):
        before = service.cycle(busy(200))
    service.tree.add_process(200, "python3", cgroup=SERVICE.format("new"), start_ticks=9_000_000)
    after = service.cycle(busy(200))
    assert owners(before, 200) == {("systemd", "old.service")}
    assert owners(after, 200) == {("systemd", "new.service")}
    assert sm_seconds(after, 200) < sm_seconds(before, 200)  # one interval's, not three


def test_a_process_moved_to_another_cgroup_gets_its_new_owner(service: Service) -> None:
    """The same process (same PID and start time) is moved to another cgroup between two writes, as `systemd-run
    --scope`, a cgroup.procs write or a runtime's exec can do: /proc/<pid>/cgroup is read at every write
    (collector.procfs.describe), and the series that are kept are those of the owner it names now."""
    service.tree.add_process(300, "python3", cgroup=SERVICE.format("first"))
    before = service.cycle(busy(300))
    service.tree.write("proc/300/cgroup", SERVICE.format("second"))
    after = service.cycle(busy(300))
    assert owners(before, 300) == {("systemd", "first.service")}
    assert owners(after, 300) == {("systemd", "second.service")}


def test_a_reloaded_label_prefix_renames_the_labels_of_every_kept_series(service: Service) -> None:
    """SIGHUP can bring a new --label-prefix: the next write names the native metrics' labels with it."""
    service.tree.add_process(400, "python3")
    service.cycle(busy(400))
    text = service.cycle(busy(400), label_prefix="k8s_")
    assert set(labels_of(text, "gpu_process_memory_bytes", 400)[0]) >= {"k8s_pod", "k8s_namespace", "k8s_container"}
    assert "pod" not in labels_of(text, "gpu_process_memory_bytes", 400)[0]


def test_the_cache_keeps_nothing_for_processes_gone(service: Service) -> None:
    """Processes come and go for many cycles, as on a busy node: the cache holds the processes of the last write
    only, so the service's memory does not grow with every process it has seen."""
    pids = list(range(500, 540))
    for pid in pids:
        service.tree.add_process(pid, "python3", cgroup=SERVICE.format(f"job{pid % 7}"))
    for n in range(12):
        listed = pids[n * 2:n * 2 + 10]
        service.cycle(*(busy(pid, index=pid % 2) for pid in listed))
        assert sorted(pid for _, _, pid, _, _ in service.cache.processes) == listed
    service.cycle()
    assert service.cache.processes == {}
