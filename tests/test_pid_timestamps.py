"""Per-process utilisation entries of one read can be seconds apart from PID to PID (docs/nvml-driver.md, "Per-process
utilisation"): what was seen is kept per process, so a busy process whose new entry is older than another process's
last one still counts, in a timer run and in the long-running mode, and an unlisted PID's entry moves nothing. The
stand-in plays it with recurring samples that appear `lag_s` after their timestamp."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import Host
from tests.support.simhost import GIB, Gpu, gpu_uuid, proc, scenario
from tests.test_service import count_pings, metrics, service, wait_for_writes

# 981 is read as soon as the driver samples it; 982, busy at 99 %, comes in five seconds late: after a first read,
# each of its new entries is older than 981's last one.
PROMPT = {"pid": 981, "every_s": 0.05, "sm": 10}
LATE = {"pid": 982, "every_s": 0.05, "lag_s": 5, "sm": 99}
UNLISTED = {"pid": 99999, "every_s": 0.05, "sm": 50}  # a PID in no process list, with the newest entries of all


def saved(host: Host) -> dict[str, int]:
    return dict(json.loads((host.state_dir / "state.json").read_text())["last_seen_us"])


def test_a_busy_process_read_late_is_not_read_as_idle_in_timer_runs(host: Host) -> None:
    """983 had one burst, an entry both runs find in the driver's buffer: it counts once, in the first run, though
    the second run's query reaches back past it for 982."""
    for pid in (981, 982, 983):
        host.tree.add_process(pid)
    burst = {"pid": 983, "timestamp_us": int((time.time() - 2) * 1e6), "sm": 70}

    def document() -> dict[str, object]:
        return scenario([Gpu(0, compute=[proc(981, GIB), proc(982, GIB), proc(983, GIB)],
                             samples=[PROMPT, LATE, UNLISTED, burst], utilization_shape="buffered")])

    first = host.run(document())
    assert first.value("gpu_process_utilization", pid="982") == 99
    assert first.value("gpu_process_utilization", pid="983") == 70
    before = saved(host)
    gpu = gpu_uuid(0)
    # The listed PIDs only: 99999's entry is kept nowhere.
    assert set(before) == {gpu, f"{gpu}/981", f"{gpu}/982", f"{gpu}/983"}
    assert before[f"{gpu}/982"] < before[f"{gpu}/981"] - 4_000_000  # one read, entries seconds apart
    # The next run comes once 982 has a new entry: stamped past its own last one, before 981's.
    while int(time.time() * 1e6) - 5_000_000 <= before[f"{gpu}/982"] + 100_000:
        time.sleep(0.05)
    second = host.run(document())
    assert second.value("gpu_process_utilization", pid="982") == 99
    assert second.value("gpu_process_info", pid="982", status="active") == 1
    assert second.value("gpu_process_utilization", pid="981") == 10
    assert second.value("gpu_process_info", pid="983", status="idle") == 1
    after = saved(host)
    assert after[f"{gpu}/982"] > before[f"{gpu}/982"]
    assert after[f"{gpu}/982"] < before[f"{gpu}/981"]

    # 982 ends: its timestamp goes with it.
    host.tree.remove_process(982)
    host.tree.remove_process(983)
    host.run(scenario([Gpu(0, compute=[proc(981, GIB)], samples=[PROMPT, UNLISTED])]))
    assert set(saved(host)) == {gpu, f"{gpu}/981"}


def test_a_busy_process_read_late_is_not_read_as_idle_in_the_long_running_mode(host: Host) -> None:
    """983's one burst, before the service started, counts in the first write's window only."""
    for pid in (981, 982, 983):
        host.tree.add_process(pid)
    burst = {"pid": 983, "timestamp_us": int((time.time() - 2) * 1e6), "sm": 70}
    doc = scenario([Gpu(0, compute=[proc(981, GIB), proc(982, GIB), proc(983, GIB)],
                        samples=[PROMPT, LATE, UNLISTED, burst])])
    with service(host, doc, "--interval", "600", "--sample-interval", "0.2") as (process, notes):
        notes.wait_for("READY=1")
        notes.wait_for_count("WATCHDOG=1", count_pings(notes) + 5)  # a few ticks, each after new entries of 982
        process.send_signal(signal.SIGHUP)
        wait_for_writes(host, 1)
        util = {lab["pid"]: v for lab, v in metrics(host)["gpu_process_utilization"]}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # 99 % all along, a little under where a tick came within one driver sample period of the previous one.
    assert 80 < util["982"] <= 99.0001, util
    assert 5 < util["981"] <= 10.0001, util
    assert util["983"] == 0, util
    assert "99999" not in util


def test_a_saved_timestamp_past_now_hides_nothing(host: Host) -> None:
    """The clock stepped back since the last run: a process's saved timestamp lies a day ahead. Its entries are
    read as a new process's are, and the timestamp saved now is today's."""
    host.tree.add_process(984)
    gpu = gpu_uuid(0)
    tomorrow = int((time.time() + 86_400) * 1e6)
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text(json.dumps({
        "version": 2, "last_success": time.time() - 60, "last_seen_us": {gpu: tomorrow, f"{gpu}/984": tomorrow}}))
    result = host.run(scenario([Gpu(0, compute=[proc(984, GIB)], samples=[{"pid": 984, "age_s": 2, "sm": 45}])]))
    assert result.value("gpu_process_utilization", pid="984") == 45
    assert all(ts < tomorrow for ts in saved(host).values())
