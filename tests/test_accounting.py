"""Usage and energy accounting per owner (docs/accounting.md): counters across runs with the real CLI and the
stand-in NVML, and their properties over arbitrary sequences of runs."""

from __future__ import annotations

import json
import time

from hypothesis import example, given, settings
from hypothesis import strategies as st

from collector import accounting
from collector.model import Device, DeviceActivity, GpuProcess, HostProcess, MigInfo, Owner, ProcessRecord
from tests.conftest import Host, Result
from tests.support.podsim import PodHost
from tests.support.simhost import GIB, Gpu, gpu_instance, gpu_uuid, mig_instance, proc, scenario

EPOCH = 1_764_470_000.0
RATE_MJ_PER_S = 250_000  # a 250 W GPU


def owner(result: Result, family: str, **labels: str) -> float:
    found = [v for lab, v in result.series(family) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (family, labels, result.series(family))
    return found[0]


def interval(first: Result, second: Result) -> float:
    return (second.value("gpu_proc_collector_last_success_timestamp_seconds")
            - first.value("gpu_proc_collector_last_success_timestamp_seconds"))


def cluster(host: Host) -> tuple[dict[str, object], dict[str, object]]:
    """GPU 0 (250 W): pod ml/train busy at 60 %, pod ml/idle holding 8 GiB and idle. GPU 1 in MIG mode with
    GPM: pod ml/eval alone on a 3g.40gb instance (3 of 7 slices) at 50 % SM. Two scenario versions: the second
    has the fresh utilisation samples the second run reads."""
    k8s = PodHost(host.tree)
    for pid, name in ((1001, "train"), (1002, "idle"), (1003, "eval")):
        k8s.add_process(pid, k8s.add_pod("ml", name))

    def document() -> dict[str, object]:
        gpu0 = Gpu(0, compute=[proc(1001, 4 * GIB), proc(1002, 8 * GIB)],
                   samples=[{"pid": 1001, "age_s": 0.01, "sm": 60}],
                   energy_mj=10**9, energy_mj_per_s=RATE_MJ_PER_S, energy_epoch_s=EPOCH)
        instances = [mig_instance(1, slot=0, gi=2, ci=0, profile="3g.40gb", total_gib=40,
                                  compute=[proc(1003, 2 * GIB)])]
        gpu1 = Gpu(1, mig=instances, gpu_instances=[gpu_instance(2, total_gib=40, used=2 * GIB,
                                                                 gpm={"supported": True, "sm_util": 50.0})],
                   gpm={"supported": True}, energy_mj=5 * 10**8, energy_mj_per_s=RATE_MJ_PER_S, energy_epoch_s=EPOCH)
        return scenario([gpu0, gpu1])

    return document(), document()


def test_two_runs_give_exactly_the_expected_increases_and_the_energy_adds_up(host: Host) -> None:
    first_doc, second_doc = cluster(host)
    first = host.run(first_doc)
    assert first.returncode == 0, first.stderr
    # A first run has nothing to measure from: every owner starts at 0.
    assert {v for _, v in first.series("gpu_owner_gpu_seconds_total")} == {0.0}
    time.sleep(0.3)
    second = host.run(second_doc)
    assert second.returncode == 0, second.stderr
    span = interval(first, second)
    assert span > 0

    train, idle, eval_ = ({"namespace": "ml", "pod": p} for p in ("train", "idle", "eval"))
    assert abs(owner(second, "gpu_owner_gpu_seconds_total", **train) - span) < 1e-5
    assert abs(owner(second, "gpu_owner_gpu_seconds_total", **idle) - span) < 1e-5
    assert abs(owner(second, "gpu_owner_gpu_seconds_total", **eval_) - 3 / 7 * span) < 1e-5
    assert abs(owner(second, "gpu_owner_sm_seconds_total", **train) - 0.6 * span) < 1e-5
    assert owner(second, "gpu_owner_sm_seconds_total", **idle) == 0
    assert abs(owner(second, "gpu_owner_sm_seconds_total", **eval_) - 0.5 * 3 / 7 * span) < 1e-5
    assert abs(owner(second, "gpu_owner_memory_byte_seconds_total", **idle) - 8 * GIB * span) < 8 * GIB * 1e-5

    # Energy: every GPU's increase is split between owners, the rest unattributed; the split adds up.
    device = {lab["gpu"]: v for lab, v in second.series("gpu_device_energy_joules_total")}
    before = {lab["gpu"]: v for lab, v in first.series("gpu_device_energy_joules_total")}
    joules = sum(device.values()) - sum(before.values())
    assert joules > 0
    split = sum(v for _, v in second.series("gpu_owner_energy_joules_total"))
    assert abs(split - joules) <= 0.001 * joules
    gpu0 = device["0"] - before["0"]
    assert abs(owner(second, "gpu_owner_energy_joules_total", **train) - 0.6 * gpu0) <= 0.001 * gpu0
    assert owner(second, "gpu_owner_energy_joules_total", **idle) == 0
    assert owner(second, "gpu_owner_energy_joules_total", owner_kind="unattributed") > 0
    assert second.value("gpu_proc_collector_accounting_gap_seconds_total") == 0
    assert abs(second.value("gpu_process_sm_seconds_total", pid="1001") - 0.6 * span) < 1e-5


def _state(host: Host) -> dict[str, object]:
    document: dict[str, object] = json.loads((host.state_dir / "state.json").read_text())
    return document


def _rewrite_state(host: Host, **changes: object) -> None:
    document = _state(host)
    document.update(changes)
    (host.state_dir / "state.json").write_text(json.dumps(document))


def test_a_gap_of_more_than_three_intervals_is_counted_not_filled(host: Host) -> None:
    first_doc, second_doc = cluster(host)
    assert host.run(first_doc).returncode == 0
    _rewrite_state(host, last_success=time.time() - 600)  # ten minutes ago, with one-minute runs
    second = host.run(second_doc)
    assert second.returncode == 0, second.stderr
    assert {v for _, v in second.series("gpu_owner_gpu_seconds_total")} == {0.0}
    assert {v for _, v in second.series("gpu_owner_energy_joules_total")} <= {0.0}
    assert 599 <= second.value("gpu_proc_collector_accounting_gap_seconds_total") <= 700
    assert "not accounted, counted as a gap" in second.stderr


def test_a_clock_stepped_back_adds_nothing_and_says_so(host: Host) -> None:
    first_doc, second_doc = cluster(host)
    assert host.run(first_doc).returncode == 0
    _rewrite_state(host, last_success=time.time() + 3600)
    second = host.run(second_doc)
    assert second.returncode == 0, second.stderr
    assert {v for _, v in second.series("gpu_owner_gpu_seconds_total")} == {0.0}
    assert "clock stepped back" in second.stderr


def test_an_energy_counter_that_went_back_counts_only_the_energy_since(host: Host) -> None:
    """A driver reload restarts nvmlDeviceGetTotalEnergyConsumption: no negative increase, a log line."""
    first_doc, second_doc = cluster(host)
    assert host.run(first_doc).returncode == 0
    document = _state(host)
    ledger = document["accounting"]
    assert isinstance(ledger, dict)
    ledger["energy_mj"] = dict.fromkeys(ledger["energy_mj"], 10 ** 15)
    _rewrite_state(host, accounting=ledger)
    second = host.run(second_doc)
    assert second.returncode == 0, second.stderr
    assert "energy counter went back" in second.stderr
    assert all(v >= 0 for _, v in second.series("gpu_owner_energy_joules_total"))


def test_counters_continue_across_runs_and_a_gone_process_keeps_its_owners_total(host: Host) -> None:
    first_doc, second_doc = cluster(host)
    runs = [host.run(first_doc), host.run(second_doc), host.run(second_doc)]
    totals = [owner(r, "gpu_owner_gpu_seconds_total", namespace="ml", pod="idle") for r in runs]
    assert totals == sorted(totals)
    host.tree.remove_process(1002)
    gone = host.run(second_doc)
    assert owner(gone, "gpu_owner_gpu_seconds_total", namespace="ml", pod="idle") == totals[-1]  # kept, not grown
    assert not gone.series("gpu_process_sm_seconds_total", pid="1002")


def test_an_older_state_file_starts_the_counters_from_zero_with_a_log_line(host: Host) -> None:
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text(json.dumps({"version": 1, "last_success": time.time() - 30,
                                                          "last_seen_us": {}, "last_active": {}}))
    first_doc, _ = cluster(host)
    result = host.run(first_doc)
    assert result.returncode == 0, result.stderr
    assert "accounting counters start from 0" in result.stderr


# ---- properties over arbitrary runs, in process ----

GPU = Device(label="0", index=0, uuid=gpu_uuid(0), name="H100", memory_total=80 * GIB, memory_used=GIB)
MIG = Device(label="1_1_0", index=1, uuid="MIG-x", name="H100", memory_total=40 * GIB, memory_used=GIB,
             mig=MigInfo(gpu_instance_id=1, compute_instance_id=0, profile="3g.40gb", parent_uuid=gpu_uuid(1),
                         share=3 / 7))


def _record(pid: int, pod: str, sm: float, on_mig: bool) -> ProcessRecord:
    device = MIG if on_mig else GPU
    gpu = GpuProcess(pid=pid, device=device, used_memory=GIB, sm_utilization=None if on_mig else sm,
                     active=None if on_mig else sm > 0)
    host = HostProcess(pid=pid, name="python3", start_time=0.0, cgroup="")
    return ProcessRecord(gpu=gpu, host=host, owner=Owner(kind="pod", name=f"ml/{pod}", pod=pod, namespace="ml"))


_runs = st.lists(st.tuples(
    st.floats(min_value=-30, max_value=400),  # seconds since the previous run (negative: the clock stepped back)
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 100), st.booleans()), max_size=4),
    st.integers(-10**9, 10**9),  # energy change in mJ (negative: a driver reload)
), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_runs)
@example([(0.0, [], 0), (1.0, [], -1), (1.0, [], -1), (1.0, [], -1),  # three reloads: 10^9 J counters, then 0.438 J
          (1.0, [("a", 0.0, True), ("b", 80.0, False)], 219)])
def test_counters_never_go_backwards_and_energy_always_adds_up(runs: list[tuple[float, list[tuple[str, float, bool]],
                                                                               int]]) -> None:
    ledger = accounting.Ledger()
    now, last, energy = 1_000_000.0, None, {gpu_uuid(0): 10**12, gpu_uuid(1): 10**12}
    for step, processes, change in runs:
        now += step
        before, energy = energy, {gpu: max(0, mj + change) for gpu, mj in energy.items()}
        # What the GPUs used in this interval, worked out here from the readings: nothing without an interval to
        # split it over (a first run, the clock stepped back, a gap of more than three 60 s intervals); after a
        # reading lower than the one before (a driver reload), the new reading is all that was used since.
        accountable = last is not None and 0 < now - last <= 3 * 60
        used = sum((new_mj - before[gpu] if new_mj >= before[gpu] else new_mj) / 1000.0
                   for gpu, new_mj in energy.items()) if accountable else 0.0
        records = [_record(100 + i, pod, sm, mig) for i, (pod, sm, mig) in enumerate(processes)]
        new = accounting.account(ledger, records, [r.key for r in records], {"1_1_0": _activity(40.0)}, energy,
                                 last_success=last, now=now, nominal_interval=60, max_owners=1000)
        for key, usage in new.owners.items():
            before = ledger.owners.get(key, accounting.OwnerUsage())
            for name in ("gpu_seconds", "sm_seconds", "memory_byte_seconds", "energy_joules"):
                assert getattr(usage, name) >= getattr(before, name) - 1e-9, (key, name)
        gained = sum(u.energy_joules for u in new.owners.values()) - sum(
            u.energy_joules for k, u in ledger.owners.items() if k in new.owners)
        # Owners plus unattributed: exactly the GPUs' energy in the interval (an owner dropped for age had no
        # process this run, so it had no part of it), to the rounding of counters that reach 10^9 J and more.
        rounding = 1e-14 * sum(u.energy_joules for u in new.owners.values())
        assert abs(gained - used) <= 1e-6 * max(1.0, used) + rounding, (gained, used)
        assert new.gap_seconds >= ledger.gap_seconds
        ledger, last = new, now


def _activity(sm: float) -> DeviceActivity:
    return DeviceActivity(seconds=1.0, sm_util=sm, sm_occupancy=None, tensor_active=None, dram_bw_util=None)


def test_the_ledger_reads_back_as_written_each_counter_in_its_column() -> None:
    """to_json writes an owner's counters in OwnerUsage.FIELDS' order, which from_json reads them in: each counter
    comes back as itself (distinct values, so two columns swapped show)."""
    usage = accounting.OwnerUsage(gpu_seconds=1.5, sm_seconds=2.5, memory_byte_seconds=3.5, energy_joules=4.5,
                                  last_seen=5.5)
    ledger = accounting.Ledger(owners={("pod", "ml/a", "ml", "a"): usage}, processes={"GPU-a/1/2.00": 6.5},
                               energy_mj={"GPU-a": 7}, gap_seconds=8.5)
    again = accounting.from_json(accounting.to_json(ledger))
    assert again.owners == {("pod", "ml/a", "ml", "a"): usage}
    assert (again.processes, again.energy_mj, again.gap_seconds) == ({"GPU-a/1/2.00": 6.5}, {"GPU-a": 7}, 8.5)
