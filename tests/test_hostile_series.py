"""What a tenant can do to the series the collector exports, tried with the real CLI on a simulated host: flood
the owner series, make two owners one label set, keep the service from stopping, and the smaller leftovers (stale
temporary files, a hand-edited last_success, secrets in command lines). docs/security-series.md."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from collector import accounting
from collector.model import MAX_LABEL_CHARS, Device, GpuProcess, HostProcess, Owner, ProcessRecord, safe_name
from collector.redact import REDACTED, redact_args
from tests.conftest import Host, Result
from tests.support.podsim import PodHost
from tests.support.simhost import GIB, Gpu, proc, scenario, update_scenario, write_podman_store
from tests.test_service import Notifications, count_pings, service

OWNER_FAMILIES = ("gpu_owner_gpu_seconds_total", "gpu_owner_sm_seconds_total", "gpu_owner_memory_byte_seconds_total",
                  "gpu_owner_energy_joules_total")


def owners_in_state(host: Host) -> list[list[object]]:
    rows: list[list[object]] = json.loads((host.state_dir / "state.json").read_text())["accounting"]["owners"]
    return rows


def total(result: Result, family: str) -> float:
    return sum(v for _, v in result.series(family))


def interval(first: Result, second: Result) -> float:
    return (second.value("gpu_proc_collector_last_success_timestamp_seconds")
            - first.value("gpu_proc_collector_last_success_timestamp_seconds"))


# ---- a flood of owners ----

def test_a_flood_of_new_pod_owners_every_run_stays_within_the_owner_budget_and_the_totals_stay_exact(
        host: Host) -> None:
    """Reproduction: 50 GPU processes, each in a new pod every run (a tenant's fresh fake pod UIDs do the same).
    Without a budget, each run adds 50 owner series, kept in the state for an hour. With --max-owner-series 120:
    the first two runs' 100 owners keep their series, the third run's first 20 take the places left, every other
    new owner is counted as owner_kind="overflow", and the owners' counters still add up to everything accounted
    (each process held the whole GPU and 1 GiB for the whole interval). Processes over --max-process-series are
    aggregated under the overflow owner too, never one series per fake owner."""
    k8s = PodHost(host.tree)
    pids = range(7000, 7050)
    document = scenario([Gpu(0, compute=[proc(pid, GIB) for pid in pids])])
    budget = 120
    results: list[Result] = []
    for run in range(6):
        for pid in pids:
            k8s.add_process(pid, k8s.add_pod("flood", f"fake-{run}-{pid}"))
        result = host.run(document, "--max-owner-series", str(budget), "--max-process-series", "20")
        assert result.returncode == 0, result.stderr
        results.append(result)
        for family in OWNER_FAMILIES:
            assert len(result.series(family)) <= budget + 2  # the overflow and unattributed owners
        assert len(owners_in_state(host)) <= budget + 2
        named = [lab for lab, _ in result.series("gpu_owner_gpu_seconds_total") if lab["owner_kind"] == "pod"]
        assert len(named) == min(budget, 50 * (run + 1))
        assert result.value("gpu_proc_collector_owner_series_folded") == [0, 0, 30, 50, 50, 50][run]
        if run >= 2:
            aggregated = {lab["owner_kind"] for lab, _ in result.series("gpu_process_aggregated_count")}
            assert aggregated == {"overflow"}, aggregated
    for before, after in zip(results, results[1:]):
        span = interval(before, after)
        gained = total(after, "gpu_owner_gpu_seconds_total") - total(before, "gpu_owner_gpu_seconds_total")
        # each of the at most budget + 2 owner counters is written rounded to 6 decimals, before and after
        assert gained == pytest.approx(50 * span, rel=1e-6, abs=(budget + 2) * 1e-6)
        memory = (total(after, "gpu_owner_memory_byte_seconds_total")
                  - total(before, "gpu_owner_memory_byte_seconds_total"))
        assert memory == pytest.approx(50 * GIB * span, rel=1e-6)
    # the owners that kept their series are the first ones seen, run after run: no series comes and goes
    first_kept = {lab["pod"] for lab, _ in results[2].series("gpu_owner_gpu_seconds_total") if lab["pod"]}
    last_kept = {lab["pod"] for lab, _ in results[-1].series("gpu_owner_gpu_seconds_total") if lab["pod"]}
    assert first_kept == last_kept


def test_a_flood_of_owners_with_names_at_the_limit_stays_within_the_name_budget() -> None:
    """Reproduction: a thousand owners with names of 1,024 characters each are 12.6 MB of file and 3 MB of state,
    rendered at a peak near the unit's MemoryMax=64M. The budget also bounds what the kept owners' names take:
    NAME_CHARS_PER_OWNER per place: of owners whose names take 2,050 characters, one fits a budget of 12 places
    (3,072 characters), the rest go to the overflow owner, and short names still take the places left."""
    now = 1_000_000.0
    budget = 12
    long_owners = [_owner_record(9000 + i, "n" * 2000 + str(i)) for i in range(20)]
    ledger = accounting.account(accounting.Ledger(), long_owners, [r.key for r in long_owners], {}, {},
                                last_success=None, now=now, nominal_interval=60, max_owners=budget)
    named = [k for k in ledger.owners if k[0] == "pod"]
    assert sum(len(k[1]) + len(k[2]) + len(k[3]) for k in named) <= budget * accounting.NAME_CHARS_PER_OWNER
    assert len(named) == 1
    assert ledger.folded == 20 - len(named)
    short = [_owner_record(9100 + i, f"job-{i}") for i in range(20)]
    ledger = accounting.account(ledger, short, [r.key for r in short], {}, {}, last_success=now, now=now + 60,
                                nominal_interval=60, max_owners=budget)
    assert len([k for k in ledger.owners if k[0] == "pod"]) == budget


def _owner_record(pid: int, pod: str) -> ProcessRecord:
    device = Device(label="0", index=0, uuid="GPU-0", name="H100", memory_total=80 * GIB, memory_used=GIB)
    gpu = GpuProcess(pid=pid, device=device, used_memory=GIB, sm_utilization=50.0, active=True)
    host = HostProcess(pid=pid, name="python3", start_time=0.0, cgroup="")
    return ProcessRecord(gpu=gpu, host=host, owner=Owner(kind="pod", name=f"ml/{pod}", pod=pod, namespace="ml"))


# ---- two owners, one label set ----

def test_rootless_podman_names_that_differ_only_past_the_limit_or_only_in_surrogates_stay_two_owners(
        host: Host) -> None:
    """Reproduction: a rootless user names two containers alike in their first 1,100 characters, and two others
    that differ only in a lone surrogate (a JSON escape in containers.json). Cut or cleaned alike, each pair was
    one label set: duplicate series, of which node_exporter serves one and drops the other owner's counters. Each
    name is now cut with a suffix from its whole original: four owners, four label sets, none over the limit, and
    the file has no duplicate series (Host.run checks every file)."""
    names = {"a1" * 32: "n" * 1100 + "-alpha", "b2" * 32: "n" * 1100 + "-beta",
             "c3" * 32: "job\ud800", "d4" * 32: "job\udfff"}
    host.tree.write("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    write_podman_store(host.tree, names, root="home/alice/.local/share/containers/storage")
    pids = list(range(3100, 3104))
    for pid, cid in zip(pids, names):
        host.tree.add_process(pid, "python3", cgroup="0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
                              f"libpod-{cid}.scope/container\n")
    document = scenario([Gpu(0, compute=[proc(pid, GIB) for pid in pids])])
    assert host.run(document).returncode == 0
    result = host.run(document)  # the second run accounts: owner series with values
    assert result.returncode == 0, result.stderr
    shown = {lab["owner"] for lab, _ in result.series("gpu_process_memory_bytes")}
    assert shown == {safe_name(name) for name in names.values()}
    assert len(shown) == 4
    assert all(len(owner) <= MAX_LABEL_CHARS for owner in shown)
    accounted = {lab["owner"] for lab, _ in result.series("gpu_owner_gpu_seconds_total")
                 if lab["owner_kind"] == "podman"}
    assert accounted == shown


@given(st.text(alphabet=st.sampled_from(["a", "~", "0", "f", "\ud800", "\udfff", "\u00e9", "\U0001f600"]),
               max_size=MAX_LABEL_CHARS + 40))
@example("n" * 2000)
@example("x" * MAX_LABEL_CHARS + "\ud800")
def test_a_safe_name_fits_encodes_and_is_its_own_safe_name(name: str) -> None:
    """Whatever the name: at most the limit, encodable as UTF-8, unchanged when it was fine, and unchanged when
    made safe again (so a stage may apply it to a name an earlier stage made safe)."""
    safe = safe_name(name)
    assert len(safe) <= MAX_LABEL_CHARS
    safe.encode("utf-8")
    assert safe_name(safe) == safe
    if len(name) <= MAX_LABEL_CHARS and not any("\ud800" <= c <= "\udfff" for c in name):
        assert safe == name


def test_names_that_differ_only_past_the_limit_or_in_surrogates_get_two_safe_names() -> None:
    assert safe_name("n" * 1100 + "a") != safe_name("n" * 1100 + "b")
    assert safe_name("job\ud800") != safe_name("job\udfff")
    assert safe_name("job\ud800").startswith("job\ufffd~")


def test_owner_names_an_older_state_stored_whole_are_loaded_as_safe_names() -> None:
    """An older collector kept owner names whole in the state (a 60 MB name: 60 MB more in every save). Loaded,
    such a row's names become what owner_key makes of them now, so its counters carry on under the same key; a
    row already safe is kept as it is."""
    long_name, cut = "p" * 5000, safe_name("p" * 5000)
    usage = [1.0, 2.0, 3.0, 4.0, 5.0]
    ledger = accounting.from_json({"owners": [["podman", long_name, "", "", *usage],
                                              ["podman", "vllm", "", "", *usage],
                                              ["podman", "x\ud800", "", "", *usage]]})
    assert set(ledger.owners) == {("podman", cut, "", ""), ("podman", "vllm", "", ""),
                                  ("podman", safe_name("x\ud800"), "", "")}
    assert ("podman", cut, "", "") in accounting.from_json(accounting.to_json(ledger)).owners



def test_a_hand_edited_ledger_keeps_only_its_well_formed_rows() -> None:
    """Each owner row of the state is four names and five finite, non-negative numbers, each process's SM seconds
    one such number: a row or value of another shape (JSON's true, NaN, Infinity, a negative or quoted number, a
    name that is no string, a row too short or too long) is left out, and its counters restart from 0, never
    from a wrong value."""
    good = [1.0, 2, 3.0, 4.0, 5.0]
    rows = [["pod", "ml/a", "ml", "a", *good],
            ["pod", "ml/b", "ml", "b", True, 2.0, 3.0, 4.0, 5.0],
            ["pod", "ml/c", "ml", "c", 1.0, math.nan, 3.0, 4.0, 5.0],
            ["pod", "ml/d", "ml", "d", 1.0, 2.0, math.inf, 4.0, 5.0],
            ["pod", "ml/e", "ml", "e", 1.0, 2.0, 3.0, -4.0, 5.0],
            ["pod", "ml/f", "ml", "f", 1.0, 2.0, 3.0, 4.0, "5"],
            ["pod", 7, "ml", "g", *good],
            ["pod", "ml/h", "ml", None, *good],
            ["pod", "ml/i", "ml", "i", *good, 6.0],
            ["pod", "ml/j", "ml", "j", *good[:4]],
            {"kind": "pod"}]
    processes = {"a": 1.5, "b": True, "c": math.nan, "d": -1.0, "e": "2", "f": math.inf, "g": 0}
    ledger = accounting.from_json({"owners": rows, "processes": processes})
    assert list(ledger.owners) == [("pod", "ml/a", "ml", "a")]
    assert ledger.owners[("pod", "ml/a", "ml", "a")].sm_seconds == 2.0
    assert ledger.processes == {"a": 1.5, "g": 0.0}

# ---- SIGTERM while NVML hangs between collections ----

def test_sigterm_wins_over_an_nvml_call_hung_between_collections(host: Host) -> None:
    """Reproduction: the service has written its file and samples utilisation between collections; one sample's
    NVML call hangs in the driver (300 s here). SIGTERM used to wait for it (the one-second abandon covered only a
    running collection): the service was still running long after. Now it exits 0, says STOPPING=1, and the last
    good file stays."""
    host.tree.add_process(941)
    document = scenario([Gpu(0, compute=[proc(941, GIB)])])
    with service(host, document, "--interval", "600", "--sample-interval", "0.1") as (process, notes):
        notes.wait_for("READY=1")
        good = host.prom.read_bytes()
        notes.wait_for_count("WATCHDOG=1", count_pings(notes) + 2)  # samples are being taken
        hung = scenario([Gpu(0, compute=[proc(941, GIB)])], delays={"nvmlDeviceGetProcessUtilization": 300})
        update_scenario(host.base / "scenario.json", hung)
        _wait_until_pings_stop(notes)  # the next sample is in the hung call
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)  # only a bound: a process left hanging fails here
        assert process.returncode == 0, stderr
        notes.wait_for("STOPPING=1")
    assert host.prom.read_bytes() == good


def _wait_until_pings_stop(notes: Notifications, quiet: float = 2.0) -> None:
    """Returns once no WATCHDOG=1 came for `quiet` seconds (twenty sample intervals): the sampler is stuck."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        notes.sock.settimeout(quiet)
        try:
            notes.received.append(notes.sock.recv(4096).decode())
        except socket.timeout:
            return
    pytest.fail("the service kept sampling: the hung call was never reached")


# ---- leftovers and hand edits ----

def test_temporary_files_of_a_killed_run_are_removed_and_nothing_else(host: Host) -> None:
    """Reproduction: a run killed while it wrote left `.gpu_processes.prom.<hex>.tmp` (and the state's
    `.state.json.<hex>.tmp`), which no later run removed. Now a run removes those of its own name pattern that are
    older than a run can last (its deadline); another tool's files and a temporary file still fresh stay."""
    host.tree.add_process(951)
    host.state_dir.mkdir()
    hour_ago = time.time() - 3600
    stale = [host.textfile_dir / ".gpu_processes.prom.0123456789ab.tmp",
             host.state_dir / ".state.json.a1b2c3d4e5f6.tmp"]
    kept = [host.textfile_dir / ".gpu_processes.prom.ffffffffffff.tmp",  # fresh: a run may be writing it
            host.textfile_dir / ".other_exporter.prom.0123456789ab.tmp",  # another tool's
            host.textfile_dir / ".gpu_processes.prom.not-ours.tmp",  # not our pattern
            host.textfile_dir / ".gpu_processes.prom.0123456789abc.tmp",  # 13 hex digits, not 12
            host.textfile_dir / ".gpu_processes.prom.0123456789AB.tmp",  # os.urandom().hex() is lower case
            host.textfile_dir / ".gpu_processes.prom.0123456789ab.txt",  # not ending in .tmp
            host.textfile_dir / ".gpu_processes.prim.0123456789ab.tmp",  # another file's, of the same length
            host.textfile_dir / "gpu_processes.prom.0123456789ab.tmp"]  # not our pattern (no dot)
    for path in [*stale, *kept]:
        path.write_text("half a file")
        if path.name != ".gpu_processes.prom.ffffffffffff.tmp":
            os.utime(path, (hour_ago, hour_ago))
    result = host.run(scenario([Gpu(0, compute=[proc(951, GIB)])]))
    assert result.returncode == 0, result.stderr
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert "left by an interrupted run" in result.stderr


@pytest.mark.parametrize("last_success", [-math.inf, math.nan, 0.0, 1.0])
def test_a_hand_edited_last_success_adds_no_gap_and_no_usage(host: Host, last_success: float) -> None:
    """Reproduction: a last_success of -Infinity, NaN, 0 or 1 in the state file added infinity, NaN or 1.8e9 s to
    gpu_proc_collector_accounting_gap_seconds_total (or NaN to every owner's counters). Such a time is now taken as
    absent: this run accounts nothing, counts no gap, and says so once."""
    k8s = PodHost(host.tree)
    k8s.add_process(961, k8s.add_pod("ml", "train"))
    document = scenario([Gpu(0, compute=[proc(961, GIB)])])
    assert host.run(document).returncode == 0
    state_file = host.state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["last_success"] = last_success
    state_file.write_text(json.dumps(state))  # -Infinity, NaN: Python's JSON, as a hand edit can write them
    result = host.run(document)
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_accounting_gap_seconds_total") == 0
    assert {v for family in OWNER_FAMILIES for _, v in result.series(family)} <= {0.0}
    assert result.stderr.count("is not a plausible time") == 1


# ---- secrets in command lines ----

SECRETS = [
    (["mysql", "-u", "root", "-p", "hunter2"], f"mysql -u root -p {REDACTED}"),
    (["mysql", "-phunter2", "db"], f"mysql -p{REDACTED} db"),
    (["app", "--pw=hunter2"], f"app --pw={REDACTED}"),
    (["app", "--password", "hunter2", "--epochs", "3"], f"app --password {REDACTED} --epochs 3"),
    (["curl", "-u", "bob:hunter2", "https://x"], f"curl -u bob:{REDACTED} https://x"),
    (["curl", "-H", "Authorization: Bearer abc.def", "https://x"], f"curl -H Authorization: {REDACTED} https://x"),
    (["curl", "--header=Authorization: Basic Ym9i"], f"curl --header=Authorization: {REDACTED}"),
    (["wget", "--header", "X-Api-Key: k123", "https://x"], f"wget --header X-Api-Key: {REDACTED} https://x"),
    (["job", "token=abc", "secret=def", "epochs=3"], f"job token={REDACTED} secret={REDACTED} epochs=3"),
    (["git", "clone", "https://bob:hunter2@git.example/r"], f"git clone https://bob:{REDACTED}@git.example/r"),
    (["git", "clone", "https://ghp_abc@github.com/r"], f"git clone https://{REDACTED}@github.com/r"),
    (["fetch", "https://b.example/o?X-Amz-Signature=abc&part=1"],
     f"fetch https://b.example/o?X-Amz-Signature={REDACTED}&part=1"),
]


def test_secrets_in_command_lines_are_redacted_in_the_args_label(host: Host) -> None:
    """Reproduction: --command-args showed `-p hunter2`, `--pw=...`, `-u user:pw` and `-H "Authorization: Bearer
    ..."` as they were. Each form, one process each, in one run of the real CLI."""
    pids = list(range(3500, 3500 + len(SECRETS)))
    for pid, (args, _) in zip(pids, SECRETS):
        host.tree.add_process(pid, args[0], cmdline=args)
    result = host.run(scenario([Gpu(0, compute=[proc(pid, GIB) for pid in pids])]), "--command-args")
    assert result.returncode == 0, result.stderr
    shown = {lab["pid"]: lab["args"] for lab, _ in result.series("gpu_process_command_info")}
    assert shown == {str(pid): expected for pid, (_, expected) in zip(pids, SECRETS)}
    assert "hunter2" not in result.text


@pytest.mark.parametrize("args", [
    ["vllm", "serve", "--model", "meta-llama/Llama-3-8B", "--tokenizer", "gpt2", "--max-tokens", "512",
     "--max-num-batched-tokens", "8192", "--port", "8000"],
    ["python", "train.py", "--num-passes", "3", "--author", "me", "--keyframes", "2", "--lr=0.1",
     "CUDA_VISIBLE_DEVICES=0,1", "--url", "http://localhost:8080/v1?model=x"],
    ["curl", "-H", "Accept: application/json", "-u", "bob", "http://host:8080/"],
])
def test_ordinary_arguments_are_not_redacted(args: list[str]) -> None:
    """Options of ML programs that contain the secret words (--max-tokens, --tokenizer, --num-passes, --author)
    and ordinary headers, users and URLs stay readable. (`-p 8080` is hidden: see collector/redact.py.)"""
    assert redact_args(args) == args


def test_a_port_after_p_is_hidden_as_a_password_would_be() -> None:
    """`-p` is mysql's password and ssh's port: the label cannot tell them apart, so it hides both."""
    assert redact_args(["ssh", "-p", "2222", "host"]) == ["ssh", "-p", REDACTED, "host"]


def test_a_huge_pod_name_in_a_runtime_file_is_kept_cut_in_the_state(host: Host) -> None:
    """Reproduction: a pod whose runtime file names it with 200,000 characters (a name a CRI-O annotation or a
    rootless store could carry). The container's pod is remembered in the state from one run to the next; it was
    remembered whole, so a name near the state's size cap made the state unreadable on the next run, which then
    started every counter afresh. The runtime's names are made safe where they are read: the state holds the cut
    name with its hash suffix, and the label is the same cut name."""
    k8s = PodHost(host.tree)
    name = "p" * 200_000
    pod = k8s.add_pod("tenant", "big", write_metadata=False)
    bundle = k8s.write_metadata(pod, pod.containers[0])
    spec = json.loads(bundle.read_text())
    spec["annotations"]["io.kubernetes.cri.sandbox-name"] = name
    bundle.write_text(json.dumps(spec))
    k8s.add_process(7100, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(7100, GIB)])]))
    assert result.returncode == 0, result.stderr
    [(labels, _)] = result.series("gpu_process_memory_bytes")
    assert labels["pod"] == safe_name(name)
    assert len(labels["pod"]) <= MAX_LABEL_CHARS
    state = json.loads((host.state_dir / "state.json").read_text())
    assert name not in json.dumps(state)
    assert safe_name(name) in json.dumps(state)
