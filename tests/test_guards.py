"""Guards that only a pointed case reaches: each test here sits at the edge of one guard of the collector, so that
removing or loosening the guard fails it (the guard each one holds is named in its docstring).

Collections run in this process on a simulated host tree, with an NVML session that answers the snapshot given
(as tests/test_service_cache.py does), or against the stand-in NVML through the CLI where the guard lives in the
NVML read itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import accounting, collection
from collector.attribution.allocation import History
from collector.attribution.join import AttributionSettings, Attributor
from collector.model import Device, DeviceActivity, GpuProcess, HostProcess, MigInfo, NvmlSnapshot, Owner, ProcessRecord
from collector.settings import Settings
from collector.state import STATE_VERSION, State
from collector.textfile import WriteError, atomic_write
from tests.conftest import REPO, Host, samples
from tests.support.podsim import PodHost, pod_resources_server
from tests.support.simhost import BTIME, CLOCK_TICKS, GIB, H100, H100_MEMORY, Gpu, HostTree, gpu_uuid, proc, scenario

START_TICKS = 123456  # HostTree.add_process's default start: BTIME + 1234.56 s
NOW = BTIME + 100_000.0


class Answers:
    """An NVML session that answers one snapshot."""

    def __init__(self, snapshot: NvmlSnapshot) -> None:
        self.snapshot = snapshot

    def read(self, devices: object, last_seen_us: object, now_us: int) -> NvmlSnapshot:
        return self.snapshot


def collect(tree: HostTree, tmp_path: Path, snapshot: NvmlSnapshot) -> dict[str, list[tuple[dict[str, str], float]]]:
    settings = Settings(textfile_dir=str(tmp_path / "textfile"), host_root=str(tree.root),
                        state_dir=str(tmp_path / "state"), pod_resources_socket=str(tmp_path / "no-kubelet.sock"))
    outcome = collection.collect(settings, State(), clock=lambda: NOW, session=Answers(snapshot))  # type: ignore[arg-type]
    assert outcome.ok, outcome.text.decode()
    return samples(outcome.text.decode())


def whole_gpu(index: int = 0) -> Device:
    return Device(label=str(index), index=index, uuid=gpu_uuid(index), name=H100, memory_total=H100_MEMORY,
                  memory_used=10 * GIB, minor=index)


# ---- the PID-reuse check (collector/collection.py _describe) ----

def test_a_pid_that_started_one_clock_tick_after_the_list_was_read_is_a_reused_pid(tmp_path: Path) -> None:
    """The check has no slack: a process whose /proc start time is later than the moment NVML's lists were read
    cannot be the process NVML listed, however little later (one clock tick, /proc's resolution). One that
    started at that very moment is kept. Any slack (600 s, or one second) reports the new process under the PID's
    old GPU memory; `>=` instead of `>` drops a process that was there."""
    tree = HostTree(tmp_path / "host")
    tree.add_process(100, "there", start_ticks=START_TICKS)
    tree.add_process(101, "newcomer", start_ticks=START_TICKS + 1)
    listed_at = float(START_TICKS) / CLOCK_TICKS + float(BTIME)  # PID 100's start, computed as procfs does
    gpu = whole_gpu()
    processes = tuple(GpuProcess(pid=pid, device=gpu, used_memory=GIB, sm_utilization=None, active=None)
                      for pid in (100, 101))
    found = collect(tree, tmp_path, NvmlSnapshot(driver_version="580.95.05", devices=(gpu,), processes=processes,
                                                 failed_gpus=(), listed_at=listed_at))
    assert [labels["pid"] for labels, _ in found["gpu_process_info"]] == ["100"]
    dropped = {labels["reason"]: v for labels, v in found["gpu_proc_collector_processes_dropped"]}
    assert dropped == {"pid_reused": 1, "pid_not_found": 0, "access_denied": 0}


# ---- a MIG instance's single-owner rule (collector/collection.py _with_instance_activity, _owner_identity) ----

def mig_unit(ci: int) -> Device:
    return Device(label=f"0_1_{ci}", index=0, uuid=f"MIG-{ci}", name=H100, memory_total=40 * GIB,
                  memory_used=4 * GIB, minor=0, memory_pool="0_1_0",
                  mig=MigInfo(gpu_instance_id=1, compute_instance_id=ci, profile="3g.40gb",
                              parent_uuid=gpu_uuid(0), share=3 / 7))


def mig_status(tmp_path: Path, cgroups: dict[int, str]) -> dict[str, str]:
    """The status of each process on GPU instance 1 (two compute instances, one memory pool) whose GPM activity
    says 50 % SM, each process in the cgroup given."""
    tree = HostTree(tmp_path / "host")
    for pid, cgroup in cgroups.items():
        tree.add_process(pid, "python3", cgroup=cgroup)
    units = (mig_unit(0), mig_unit(1))
    processes = tuple(GpuProcess(pid=pid, device=units[n % 2], used_memory=GIB, sm_utilization=None, active=None)
                      for n, pid in enumerate(cgroups))
    activity = {"0_1_0": DeviceActivity(seconds=1.0, sm_util=50.0, sm_occupancy=None, tensor_active=None,
                                        dram_bw_util=None)}
    found = collect(tree, tmp_path, NvmlSnapshot(driver_version="580.95.05", devices=units, processes=processes,
                                                 failed_gpus=(), listed_at=NOW, activity=activity))
    return {labels["pid"]: labels["status"] for labels, _ in found["gpu_process_info"]}


def test_processes_of_nameless_owners_sharing_a_mig_instance_stay_unknown(tmp_path: Path) -> None:
    """Two host processes whose cgroup names no owner (both at the root cgroup) share GPU instance 1: an owner
    with no name is only itself, so these are two owners and the instance's activity cannot be given to either.
    Treating the empty name as one owner would call both active."""
    assert mig_status(tmp_path, {300: "0::/\n", 301: "0::/\n"}) == {"300": "unknown", "301": "unknown"}


def test_processes_of_one_named_owner_sharing_a_mig_instance_take_its_activity(tmp_path: Path) -> None:
    """The rule the test above guards, where it does apply: one user's two processes on the instance."""
    session = "0::/user.slice/user-1000.slice/session-1.scope\n"
    assert mig_status(tmp_path, {310: session, 311: session}) == {"310": "active", "311": "active"}


# ---- energy (collector/accounting.py _add_energy, _accountable_span) ----

def _record(pid: int, sm: float) -> ProcessRecord:
    gpu = GpuProcess(pid=pid, device=whole_gpu(), used_memory=GIB, sm_utilization=sm, active=sm > 0)
    return ProcessRecord(gpu=gpu, host=HostProcess(pid=pid, name="python3", start_time=0.0, cgroup=""),
                         owner=Owner(kind="pod", name="ml/train", pod="train", namespace="ml"))


def _energy(ledger: accounting.Ledger) -> dict[accounting.OwnerKey, float]:
    return {key: usage.energy_joules for key, usage in ledger.owners.items()}


TRAIN = ("pod", "ml/train", "ml", "train")


def test_after_a_driver_reload_only_the_energy_since_counts() -> None:
    """The energy counter restarts when the driver is reloaded: the reading, 3,000 mJ, is all that was used since
    (3 J), split as usual (a process 40 % busy over the whole interval: 40 %, the rest unattributed). Not the
    negative difference, and not nothing."""
    previous = accounting.Ledger(energy_mj={gpu_uuid(0): 10**9})
    ledger = accounting.account(previous, [_record(100, 40.0)], ["k"], {}, {gpu_uuid(0): 3_000},
                                last_success=NOW - 60, now=NOW, nominal_interval=60, max_owners=1000)
    energy = _energy(ledger)
    assert energy[TRAIN] == pytest.approx(0.4 * 3.0)
    assert energy[accounting.UNATTRIBUTED_KEY] == pytest.approx(0.6 * 3.0)
    assert ledger.energy_mj == {gpu_uuid(0): 3_000}


def test_energy_across_a_clock_step_back_is_not_given_to_anyone() -> None:
    """The clock stepped back 100 s since the last run: the interval has no length to split energy over, so
    nobody (not even `unattributed`) gets the 5 J the counter rose by; the reading is kept, and the next run
    counts only what came after it."""
    previous = accounting.Ledger(energy_mj={gpu_uuid(0): 10_000})
    stepped = accounting.account(previous, [_record(100, 40.0)], ["k"], {}, {gpu_uuid(0): 15_000},
                                 last_success=NOW + 100, now=NOW, nominal_interval=60, max_owners=1000)
    assert set(_energy(stepped).values()) <= {0.0}
    assert stepped.energy_mj == {gpu_uuid(0): 15_000}
    assert stepped.gap_seconds == 0
    after = accounting.account(stepped, [_record(100, 40.0)], ["k"], {}, {gpu_uuid(0): 17_000},
                               last_success=NOW, now=NOW + 60, nominal_interval=60, max_owners=1000)
    assert sum(_energy(after).values()) == pytest.approx(2.0)


# ---- an allocation's history without kubelet's answer (collector/attribution/join.py allocation_view) ----

KEPT = {("ml", "reserved", "main", gpu_uuid(1)): History(1000.0, "uid-reserved")}


@pytest.fixture
def short_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="gpc-", dir="/tmp"))  # a unix socket path must fit 108 bytes
    yield root
    shutil.rmtree(root, ignore_errors=True)


def allocation_history(root: Path) -> tuple[object, dict[Any, History]]:
    attributor = Attributor(AttributionSettings(host_root=str(root), pod_resources_socket=str(root / "kubelet.sock"),
                                                pod_resources_timeout=5.0), (whole_gpu(0), whole_gpu(1)))
    return attributor.allocation_view([], (), KEPT, now=5000.0)


def test_an_allocation_history_is_kept_when_kubelet_has_no_socket(short_root: Path) -> None:
    found, kept = allocation_history(short_root)
    assert found is None
    assert kept == KEPT


@pytest.mark.parametrize("behaviour", ["unimplemented", "garbage"])
def test_an_allocation_history_is_kept_when_kubelets_list_fails(short_root: Path, behaviour: str) -> None:
    with pod_resources_server(short_root / "kubelet.sock", behaviour=behaviour) as calls:
        found, kept = allocation_history(short_root)
    assert len(calls) == (behaviour == "garbage")  # unimplemented: no List method to count a call in
    assert found is None
    assert kept == KEPT


def test_an_allocation_kubelet_no_longer_lists_loses_its_history(short_root: Path) -> None:
    """The other side of the two tests above: an answer without the allocation ends its history."""
    k8s = PodHost(HostTree(short_root))
    k8s.add_pod("ml", "other").containers[0].devices.append(("nvidia.com/gpu", [gpu_uuid(0)]))
    with pod_resources_server(short_root / "kubelet.sock", k8s.pods):
        found, kept = allocation_history(short_root)
    assert found is not None
    assert list(kept) == [("ml", "other", "main", gpu_uuid(0))]


# ---- the watchdog against a publish (collector/runner.py Watchdog) ----

RACE = """
import sys, threading
from collector import runner, state
from collector.settings import Settings

fired = threading.Event()  # the watchdog's deadline passed: it asks for the lock, or looks at `settled`


class Traced:
    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            fired.set()
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


class Probed(runner.Watchdog):
    \"\"\"The run, having found the outcome not settled yet, is held there until the watchdog has fired: the
    two overlap whatever the machine's speed.\"\"\"

    @property
    def _settled(self):
        settled = self.__dict__["settled"]
        if threading.current_thread() is threading.main_thread():
            if not settled:
                print("the watchdog fired inside the publish:", fired.wait(30), flush=True)
        else:
            fired.set()
        return settled

    @_settled.setter
    def _settled(self, value):
        self.__dict__["settled"] = value


settings = Settings(textfile_dir=sys.argv[1], state_dir=sys.argv[1] + "/state")
watchdog = Probed(0.2, settings, state.State())
watchdog._publishing = Traced(watchdog._publishing)
with watchdog:
    print("publish:", watchdog.publish(b"# the run's own file\\n"), flush=True)
watchdog._timer.join()
print("still running", flush=True)
"""


def test_the_watchdog_firing_while_the_run_publishes_waits_and_then_does_nothing(tmp_path: Path) -> None:
    """Two threads: the run is inside its publish, between looking at `settled` and setting it, when the
    watchdog's deadline passes. The watchdog must wait for the publish (the lock) and then find it settled: the
    run's file stays, the process goes on. Without the lock on either side, both find it unsettled and the
    watchdog writes `up 0` over the run's file and ends the process with exit 4."""
    result = subprocess.run([sys.executable, "-c", RACE, str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["the watchdog fired inside the publish: True", "publish: 0", "still running"]
    assert (tmp_path / "gpu_processes.prom").read_text() == "# the run's own file\n"
    assert "deadline" not in result.stderr


# ---- the listed-PID filter on utilisation entries (collector/nvml/sampling.py), through the stand-in NVML ----

def _at(stamp: float) -> int:
    return int(stamp * 1e6)


def _utilisation(result: Any, pid: int) -> float:
    return float(result.value("gpu_process_utilization", pid=str(pid)))


def two_reads(host: Host, unlisted: bool) -> tuple[float, float]:
    """Two runs over PID 801 (listed), with or without an entry of PID 99999 (in no process list) in the driver's
    answers. The first answer has 801 at 40 % stamped 5 s ago (and 99999 at 90 % stamped 0.5 s ago); the second
    has a new 801 entry at 70 % stamped 2 s before the first run: newer than 801's last entry, older than
    99999's. Returns 801's utilisation in both runs."""
    shutil.rmtree(host.state_dir, ignore_errors=True)
    host.tree.add_process(801)
    first = time.time()
    others = [{"pid": 99999, "timestamp_us": _at(first - 0.5), "sm": 90}] if unlisted else []
    samples_801 = [{"pid": 801, "timestamp_us": _at(first - 5), "sm": 40}]
    one = host.run(scenario([Gpu(0, compute=[proc(801)], samples=samples_801 + others)]))
    assert one.returncode == 0, one.stderr
    samples_801.append({"pid": 801, "timestamp_us": _at(first - 2), "sm": 70})
    two = host.run(scenario([Gpu(0, compute=[proc(801)], samples=samples_801 + others)]))
    assert two.returncode == 0, two.stderr
    assert not one.series("gpu_process_info", pid="99999")
    assert not two.series("gpu_process_info", pid="99999")
    return _utilisation(one, 801), _utilisation(two, 801)


def test_an_unlisted_pids_entry_never_changes_what_later_reads_see(host: Host) -> None:
    """An entry of a PID in no process list is never reported and cannot move what the next query reads: 801's
    new entry counts whether or not 99999's newer one was in the earlier answer."""
    assert two_reads(host, unlisted=False) == (40.0, 70.0)
    assert two_reads(host, unlisted=True) == (40.0, 70.0)


def test_an_unlisted_pids_entries_never_change_a_listed_processs_value(host: Host) -> None:
    """Several entries per process (the buffered shape): 801 at 60 % stamped 4 s ago and 30 % 1 s ago, each
    covering 3 s, is 45 %. An unlisted PID's entry stamped between them would, if counted, split the spacing
    and move the weights."""
    host.tree.add_process(801)
    values = []
    for unlisted in (False, True):
        shutil.rmtree(host.state_dir, ignore_errors=True)
        now = time.time()
        entries = [{"pid": 801, "timestamp_us": _at(now - 4), "sm": 60},
                   {"pid": 801, "timestamp_us": _at(now - 1), "sm": 30}]
        if unlisted:
            entries.append({"pid": 99999, "timestamp_us": _at(now - 2), "sm": 90})
        result = host.run(scenario([Gpu(0, compute=[proc(801)], samples=entries, utilization_shape="buffered")]))
        assert result.returncode == 0, result.stderr
        values.append(_utilisation(result, 801))
    assert values == [pytest.approx(45.0, abs=0.5)] * 2


def test_implausible_entries_of_a_listed_pid_are_dropped(host: Host) -> None:
    """SM above 100, a timestamp in the future (which, saved, would blind later reads), one at 0: none counts,
    and the next run still sees a fresh entry."""
    host.tree.add_process(811)
    now = time.time()
    garbage = [{"pid": 811, "sm": 101, "age_s": 1}, {"pid": 811, "sm": 4294967295, "age_s": 1},
               {"pid": 811, "sm": 80, "future_s": 3600}, {"pid": 811, "sm": 70, "timestamp_us": 0}]
    gpu = Gpu(0, compute=[proc(811)], samples=[{"pid": 811, "timestamp_us": _at(now - 3), "sm": 20}],
              utilization_garbage=garbage)
    first = host.run(scenario([gpu]))
    assert first.returncode == 0, first.stderr
    assert _utilisation(first, 811) == 20
    saved = json.loads((host.state_dir / "state.json").read_text())
    assert all(stamp <= time.time() * 1e6 for stamp in _stamps(saved))
    time.sleep(0.05)
    gpu.samples = [{"pid": 811, "age_s": 0.01, "sm": 55}]
    assert _utilisation(host.run(scenario([gpu])), 811) == 55


def _stamps(document: Any) -> Iterator[int]:
    """Every integer under the state's last-seen entry, whatever its shape (per GPU, or per process)."""
    stack = [document.get("last_seen_us", {})]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            yield item



# ---- GPM values (collector/nvml/gpm.py _metrics) ----

GPM_FAMILIES = ("gpu_device_sm_utilization_percent", "gpu_device_sm_occupancy_percent",
                "gpu_device_tensor_active_percent", "gpu_device_dram_bandwidth_utilization_percent")


def test_gpm_values_outside_0_to_100_and_metrics_with_their_own_error_are_left_out(host: Host) -> None:
    """SM utilisation 150 % and tensor activity -1 % are no percentages; occupancy comes with its own error (and a
    0 that means nothing): none of the three is reported, never a made-up number. DRAM bandwidth, 30 %, is."""
    gpm = {"supported": True, "sm_util": 150.0, "any_tensor_util": -1.0, "dram_bw_util": 30.0,
           "metric_errors": {"3": "NVML_ERROR_NOT_SUPPORTED"}}
    result = host.run(scenario([Gpu(0, gpm=gpm)]))
    assert result.returncode == 0, result.stderr
    found = {name: v for name in GPM_FAMILIES for labels, v in result.series(name) if labels["gpu"] == "0"}
    assert found == {"gpu_device_dram_bandwidth_utilization_percent": 30.0}


# ---- the state file's entries (collector/state.py load) ----

def test_state_entries_of_the_wrong_type_are_left_out_and_the_run_goes_on(host: Host) -> None:
    """A state file of this version whose last-seen timestamp, last-activity time, an owner's counter and a GPU's
    energy reading are text, and whose pod of a container is cut short: those entries are left out one by one
    (the run reads the last minute's samples, the idle time starts now), not a crashed run."""
    host.tree.add_process(3510)
    host.state_dir.mkdir()
    gpu = gpu_uuid(0)
    (host.state_dir / "state.json").write_text(json.dumps({
        "version": STATE_VERSION, "last_success": time.time() - 30, "last_seen_us": {gpu: "soon"},
        "last_active": {f"{gpu}/3510/{BTIME + START_TICKS / CLOCK_TICKS:.2f}": "yesterday"},
        "containers": {"0" * 64: ["ml", "train"]},
        "accounting": {"owners": [["pod", "ml/a", "ml", "a", "lots", 0, 0, 0, 0]], "energy_mj": {gpu: "x"}}}))
    result = host.run(scenario([Gpu(0, compute=[proc(3510)], samples=[{"pid": 3510, "age_s": 5, "sm": 60}])]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_utilization", pid="3510") == 60
    assert "Traceback" not in result.stderr


def test_an_entry_stamped_after_the_run_began_and_before_the_read_counts(host: Host) -> None:
    """The stand-in stamps this entry when the run loads NVML, after the run took its own time: the driver took
    it while the run was reading, it is real (under CPUQuota= a run's reads can take long enough). Only entries
    stamped after the read itself are in the future."""
    host.tree.add_process(3520)
    result = host.run(scenario([Gpu(0, compute=[proc(3520)], samples=[{"pid": 3520, "age_s": 0, "sm": 65}])]))
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_process_utilization", pid="3520") == 65


# ---- the atomic write's temporary file (collector/textfile.py) ----

@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_link_planted_at_the_temporary_name_is_never_written_through(tmp_path: Path, link: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is created new (O_EXCL; O_NOFOLLOW besides): with its random part made predictable and
    a link waiting at every name it can take, the write fails, and the link's target is untouched (a directory
    writable by others, or a second writer, cannot redirect the write). A hard link is what O_EXCL alone stops."""
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    directory = tmp_path / "textfile"
    directory.mkdir()
    monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * n)
    planted = directory / f".gpu_processes.prom.{'00' * 6}.tmp"
    if link == "symbolic":
        planted.symlink_to(target)
    else:
        os.link(target, planted)
    with pytest.raises(WriteError):
        atomic_write(str(directory / "gpu_processes.prom"), b"# new\n")
    assert target.read_text() == "keep me\n"
    assert not (directory / "gpu_processes.prom").exists()


# ---- accounting's bounds (collector/accounting.py) ----

def _held_record(pid: int, *, start: float, busy: float | None = None, sm: float = 0.0) -> ProcessRecord:
    gpu = GpuProcess(pid=pid, device=whole_gpu(), used_memory=GIB, sm_utilization=sm, active=sm > 0,
                     sm_busy_seconds=busy, window_start=None if busy is None else NOW - 60)
    return ProcessRecord(gpu=gpu, host=HostProcess(pid=pid, name="python3", start_time=start, cgroup=""),
                         owner=Owner(kind="pod", name="ml/train", pod="train", namespace="ml"))


def _one_minute(records: list[ProcessRecord], previous: accounting.Ledger | None = None) -> accounting.Ledger:
    return accounting.account(previous or accounting.Ledger(), records, [f"k{i}" for i in range(len(records))], {},
                              {}, last_success=NOW - 60, now=NOW, nominal_interval=60, max_owners=1000)


def test_one_owners_processes_on_one_gpu_hold_it_once() -> None:
    """Two processes of ml/train on GPU 0 for the whole minute: 60 GPU seconds, not 120."""
    ledger = _one_minute([_held_record(100, start=0.0), _held_record(101, start=0.0)])
    assert ledger.owners[TRAIN].gpu_seconds == 60.0


def test_busy_seconds_are_bounded_by_the_time_the_process_existed() -> None:
    """The long-running mode's integral says 90 busy seconds in a one-minute interval, for a process that started
    20 s ago: it counts 20, never more than the time it held the GPU."""
    ledger = _one_minute([_held_record(100, start=NOW - 20, busy=90.0)])
    assert ledger.owners[TRAIN].sm_seconds == 20.0


def test_a_process_that_starts_after_now_adds_nothing_never_less() -> None:
    """/proc's start time can lie ahead of the run's clock (the clock stepped back since the process started):
    the process held the GPU for no part of the interval, and no counter goes down."""
    ledger = _one_minute([_held_record(100, start=NOW + 30, sm=50.0)])
    usage = ledger.owners[TRAIN]
    assert (usage.gpu_seconds, usage.sm_seconds, usage.memory_byte_seconds) == (0.0, 0.0, 0.0)


def test_the_unattributed_counter_is_never_dropped_for_age() -> None:
    """Owners unseen for an hour are dropped; `unattributed`, which no process ever refreshes on a GPU-less hour,
    stays, so its counter never restarts from 0."""
    old = accounting.Ledger(owners={accounting.UNATTRIBUTED_KEY: accounting.OwnerUsage(energy_joules=5.0,
                                                                                      last_seen=NOW - 7200),
                                    TRAIN: accounting.OwnerUsage(energy_joules=1.0, last_seen=NOW - 7200)})
    ledger = _one_minute([], old)
    assert set(ledger.owners) == {accounting.UNATTRIBUTED_KEY}
    assert ledger.owners[accounting.UNATTRIBUTED_KEY].energy_joules == 5.0


def test_busy_seconds_over_a_processs_lifetime_are_at_most_100_percent(tmp_path: Path) -> None:
    """The long-running mode's 90 busy seconds in a 60 s window: the process's utilisation is capped at 100 %."""
    tree = HostTree(tmp_path / "host")
    tree.add_process(120, "python3")
    gpu = whole_gpu()
    busy = GpuProcess(pid=120, device=gpu, used_memory=GIB, sm_utilization=100.0, active=True, sm_busy_seconds=90.0,
                      window_start=NOW - 60)
    found = collect(tree, tmp_path, NvmlSnapshot(driver_version="580.95.05", devices=(gpu,), processes=(busy,),
                                                 failed_gpus=(), listed_at=NOW))
    assert [v for labels, v in found["gpu_process_utilization"] if labels["pid"] == "120"] == [100.0]


# ---- a GPU not read this run keeps its last-seen timestamps (collector/collection.py) ----

def test_a_gpu_that_failed_for_a_run_does_not_count_its_old_entries_again(host: Host) -> None:
    """GPU 1's process was 40 % busy in an entry the first run read. The second run loses GPU 1; the third reads
    it again, with no newer entry: 0 %, not the old entry once more, which a forgotten timestamp would read."""
    for pid in (831, 832):
        host.tree.add_process(pid)
    stamp = _at(time.time() - 5)

    def gpus(lost: bool) -> dict[str, Any]:
        return scenario([Gpu(0, compute=[proc(831)], samples=[{"pid": 831, "timestamp_us": stamp, "sm": 30}]),
                         Gpu(1, compute=[proc(832)], samples=[{"pid": 832, "timestamp_us": stamp, "sm": 40}],
                             errors={"*": "NVML_ERROR_GPU_IS_LOST"} if lost else {})])

    assert _utilisation(host.run(gpus(lost=False)), 832) == 40
    assert host.run(gpus(lost=True)).value("gpu_proc_collector_gpu_up", gpu="1") == 0
    assert _utilisation(host.run(gpus(lost=False)), 832) == 0
