"""Hostile files where the collector reads: FIFOs, devices, links out of the host root, huge and deep documents,
long numbers, crowded directories. Each test reproduces one way a tenant (or a broken node) could hang, crash or
flood a run, against the real CLI on a simulated host, and asserts the outcome: the run ends with its file
(`gpu_proc_collector_up 1`) and says what it refused, or a bad --config exits 2. collector.safeio is the one
reader; docs/reading-files.md has the rules and the caps.

Runs that the old code would hang get a subprocess timeout (a hang fails the test instead of stalling the suite);
nothing here asserts a duration."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from collector import safeio
from collector.attribution import cdi
from tests.conftest import REPO, Host, Result, mounted_tmpfs, require_root
from tests.support.cdisim import DRA_KIND, claim_spec_path, gpu_device, qualified, spec, write_spec
from tests.support.podsim import Claim, PodHost, pod_resources_server
from tests.support.simhost import Gpu, proc, scenario, write_podman_store

PODMAN_ID = "a1" * 32
STORE = "var/lib/containers/storage/overlay-containers"
HANG = 90  # seconds a run may take before the test calls it hung (the run's own deadline is below it)


def owner_of(result: Result, pid: int) -> dict[str, str]:
    (labels, _), = result.series("gpu_process_memory_bytes", pid=str(pid))
    return {k: labels[k] for k in ("owner_kind", "owner", "pod", "namespace", "container")}


def completed(result: Result) -> None:
    assert result.returncode == 0, result.stderr
    assert result.value("gpu_proc_collector_up") == 1


def podman_process(host: Host, pid: int = 300) -> None:
    host.tree.add_process(pid, "python3", cgroup=f"0::/system.slice/vllm.service/libpod-payload-{PODMAN_ID}\n")


def run_podman(host: Host, pid: int = 300) -> Result:
    return host.run(scenario([Gpu(0, compute=[proc(pid)])]), "--deadline", "30", timeout=HANG)


# ---- hangs: a FIFO where a file is expected ----

def test_a_fifo_as_containers_json_does_not_block_the_run(host: Host) -> None:
    """Reproduction: `mkfifo .../overlay-containers/containers.json`; the run blocked in open() until its
    deadline (up 0, exit 4, logged as a hung NVML call)."""
    podman_process(host)
    (host.tree.root / STORE).mkdir(parents=True)
    os.mkfifo(host.tree.root / STORE / "containers.json")
    result = run_podman(host)
    completed(result)
    assert owner_of(result, 300)["owner"] == PODMAN_ID[:12]
    assert "containers.json is not a regular file but a FIFO" in result.stderr


def test_a_fifo_as_a_cdi_spec_does_not_block_the_run(host: Host) -> None:
    """Reproduction: a FIFO at /var/run/cdi/<claim spec>.yaml; the run blocked until its deadline. Now the claim is
    unknown for the reason `unreadable`."""
    k8s = PodHost(host.tree)
    device = gpu_device("c1a1", 0)
    path = host.tree.root / claim_spec_path("c1a1")
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    pod = k8s.add_pod("ml", "trainer")
    pod.containers[0].claims.append(Claim("gpu", [qualified(device)]))
    k8s.add_process(600, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(600)])]), "--deadline", "30", timeout=HANG)
    completed(result)
    assert result.value("gpu_proc_collector_cdi_unresolved", reason="unreadable") == 1


def test_a_fifo_as_a_containerd_config_json_does_not_block_the_run(host: Host) -> None:
    """Reproduction: a FIFO in place of a container's OCI config.json: the run blocked until its deadline."""
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "trainer")
    config = next(host.tree.root.glob("run/containerd/**/config.json"))
    config.unlink()
    os.mkfifo(config)
    k8s.add_process(600, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(600)])]), "--deadline", "30", timeout=HANG)
    completed(result)
    assert "config.json is not a regular file but a FIFO" in result.stderr
    assert owner_of(result, 600)["pod"] == "trainer"  # kubelet's pod-log directory still names it


def test_a_fifo_as_the_state_file_does_not_block_the_run(host: Host) -> None:
    """Reproduction: `mkfifo <state-dir>/state.json`; the run blocked forever, before its deadline timer started.
    Now the state is started afresh and the run's own state file replaces the FIFO."""
    host.tree.add_process(100)
    host.state_dir.mkdir()
    os.mkfifo(host.state_dir / "state.json")
    result = host.run(scenario([Gpu(0, compute=[proc(100)])]), "--deadline", "30", timeout=HANG)
    completed(result)
    assert "state file unusable, starting afresh" in result.stderr
    assert stat.S_ISREG((host.state_dir / "state.json").stat().st_mode)
    assert json.loads((host.state_dir / "state.json").read_text())["version"] == 2


def test_a_fifo_as_the_config_file_is_a_usage_error(host: Host) -> None:
    """Reproduction: `--config <fifo>`: the collector blocked forever reading it. Now exit 2, with the reason."""
    fifo = host.base / "config.json"
    os.mkfifo(fifo)
    result = host.run(scenario([Gpu(0)]), "--config", str(fifo), timeout=HANG, check_file=False)
    assert result.returncode == 2, result.stderr
    assert "is not a regular file but a FIFO" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_fifo_config_on_sighup_keeps_the_service_running_and_stoppable(host: Host, fake_nvml: Path) -> None:
    """Reproduction: the service's config file replaced by a FIFO, then SIGHUP: the service blocked reading it,
    stopped writing and ignored SIGTERM. Now the reload is refused (logged), and SIGTERM stops it (exit 0)."""
    host.tree.add_process(100)
    config = host.base / "config.json"
    config.write_text(json.dumps({"interval": 1, "host_root": str(host.tree.root), "state_dir": str(host.state_dir),
                                  "textfile_dir": str(host.textfile_dir)}))
    document = scenario([Gpu(0, compute=[proc(100)])])
    scenario_path = host.base / "scenario.json"
    scenario_path.write_text(json.dumps(document))
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml), "FAKE_NVML_SCENARIO": str(scenario_path)}
    service = subprocess.Popen([sys.executable, "-m", "collector", "--config", str(config)], cwd=REPO, env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(host.prom.exists, service)
        config.unlink()
        os.mkfifo(config)
        service.send_signal(signal.SIGHUP)
        host.prom.unlink()
        _wait_for(host.prom.exists, service)  # still writing after the reload
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=HANG)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate()
    assert service.returncode == 0, stderr
    assert "SIGHUP: configuration not reloaded" in stderr
    assert "is not a regular file but a FIFO" in stderr


def _wait_for(condition: Callable[[], bool], service: subprocess.Popen[str]) -> None:
    """Waits (up to HANG seconds, a generous bound, never an assertion on time) for condition."""
    import time  # noqa: PLC0415

    end = time.monotonic() + HANG
    while not condition():
        assert service.poll() is None, f"the service exited ({service.returncode})"
        assert time.monotonic() < end, "the service wrote no file"
        time.sleep(0.05)


# ---- crashes: numbers and nesting ----

@pytest.mark.parametrize("where", ["list", "metadata"])
def test_a_deeply_nested_containers_json_is_refused_not_a_crash(host: Host, where: str) -> None:
    """Reproduction: containers.json of 100,000 `[`, or an entry whose `metadata` string (JSON inside JSON) is:
    RecursionError escaped the reader and the collection failed (up 0), every run."""
    podman_process(host)
    if where == "list":
        host.tree.write(f"{STORE}/containers.json", "[" * 100_000)
    else:
        host.tree.write(f"{STORE}/containers.json", json.dumps([{"id": PODMAN_ID, "names": [],
                                                                 "metadata": "[" * 100_000}]))
    result = run_podman(host)
    completed(result)
    assert owner_of(result, 300)["owner"] == PODMAN_ID[:12]


@pytest.mark.parametrize("ext", ["yaml", "json"])
def test_a_cdi_spec_with_a_5000_digit_number_is_malformed_not_a_crash(host: Host, ext: str) -> None:
    """Reproduction: a claim's CDI spec whose device node has a minor of 5,000 digits (YAML: `minor: 111...`;
    JSON: a `/dev/nvidia111...` path): Python's int() raised its digit-limit ValueError and the run failed, every
    run while the file existed. Now that spec is refused as malformed (YAML) or names no GPU (JSON)."""
    k8s = PodHost(host.tree)
    device = gpu_device("d1a1", 0)
    long_number = "1" * 5000
    if ext == "yaml":
        device["containerEdits"]["deviceNodes"].append({"path": "/dev/nvidia-caps/nvidia-cap1", "minor": 0})
        host.tree.write(claim_spec_path("d1a1"),
                        _go_yaml_with(spec(DRA_KIND, [device]), "minor: 0", f"minor: {long_number}"))
    else:
        device["containerEdits"]["deviceNodes"] = [{"path": f"/dev/nvidia{long_number}"}]
        write_spec(host.tree, claim_spec_path("d1a1", "json"), spec(DRA_KIND, [device]))
    pod = k8s.add_pod("ml", "trainer")
    pod.containers[0].claims.append(Claim("gpu", [qualified(device)]))
    k8s.add_process(600, pod)
    with pod_resources_server(host.socket, k8s.pods):
        result = host.run(scenario([Gpu(0, compute=[proc(600)])]), timeout=HANG)
    completed(result)
    reason = "malformed" if ext == "yaml" else "no_gpu_node"
    assert result.value("gpu_proc_collector_cdi_unresolved", reason=reason) == 1


def _go_yaml_with(document: dict[str, object], old: str, new: str) -> str:
    from tests.support.cdisim import go_yaml  # noqa: PLC0415

    text = go_yaml(document)
    assert old in text
    return text.replace(old, new)


def test_mig_minors_with_a_5000_digit_number_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """Reproduction: a mig-minors line `gpu0/gi1/access 111...` (5,000 digits): int() raised ValueError."""
    listing = tmp_path / "proc/driver/nvidia-caps/mig-minors"
    listing.parent.mkdir(parents=True)
    listing.write_text(f"config 1\ngpu0/gi1/access {'1' * 5000}\ngpu0/gi2/access 21\n")
    caps = cdi.read_mig_caps(str(tmp_path))
    assert caps[21] == cdi.MigCap(0, 2, None)
    assert len(caps) == 2


def test_a_state_file_of_100000_brackets_starts_afresh(host: Host) -> None:
    """Reproduction: state.json of 100,000 `[`: json.load raised RecursionError, a traceback and exit 1, the old
    file (up 1) left in place, every run. Now: one log line, counters from zero, a valid file and state."""
    host.tree.add_process(100)
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text("[" * 100_000)
    result = host.run(scenario([Gpu(0, compute=[proc(100)])]), timeout=HANG)
    completed(result)
    assert "state file unusable, starting afresh" in result.stderr
    assert "nested deeper than" in result.stderr
    assert json.loads((host.state_dir / "state.json").read_text())["version"] == 2


@pytest.mark.parametrize(("value", "why"), [
    ("1" + "0" * 400, "an integer of 401 digits"),  # float() of it raised OverflowError
])
def test_a_state_file_with_an_absurd_number_starts_afresh(host: Host, value: str, why: str) -> None:
    """Reproduction: `"last_success": 1000...0` (401 digits) made float() raise OverflowError outside the
    collection's error handling (a traceback, exit 1). (A non-finite number is the state's own checks' to judge,
    field by field: tests/test_hostile_series.py.)"""
    host.tree.add_process(100)
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text(f'{{"version": 2, "last_success": {value}}}')
    result = host.run(scenario([Gpu(0, compute=[proc(100)])]), timeout=HANG)
    completed(result)
    assert "state file unusable, starting afresh" in result.stderr
    assert why in result.stderr


@pytest.mark.parametrize("content", ["[" * 100_000, '{"deadline": ' + "[" * 100 + "]" * 100 + "}",
                                     '{"deadline": 1' + "0" * 5000 + "}", '{"deadline": Infinity}'])
def test_a_deep_or_absurd_config_is_a_usage_error(host: Host, content: str) -> None:
    """Reproduction: `--config` holding 100,000 `[`: RecursionError, a traceback and exit 1 instead of 2. Also 100
    levels (Python would parse them), a 5,000-digit number and Infinity."""
    config = host.base / "config.json"
    config.write_text(content)
    result = host.run(scenario([Gpu(0)]), "--config", str(config), timeout=HANG, check_file=False)
    assert result.returncode == 2, result.stderr
    assert "config file unusable" in result.stderr
    assert "Traceback" not in result.stderr


# ---- memory: devices, links, sizes, crowds ----

def test_containers_json_linked_to_dev_zero_is_refused(host: Host) -> None:
    """Reproduction: `ln -s /dev/zero .../containers.json`: the run read /dev/zero up to the 64 MiB cap (151 MiB
    RSS, an OOM kill under the unit's MemoryMax=64M). Now the link is not followed."""
    podman_process(host)
    (host.tree.root / STORE).mkdir(parents=True)
    (host.tree.root / STORE / "containers.json").symlink_to("/dev/zero")
    result = run_podman(host)
    completed(result)
    assert owner_of(result, 300)["owner"] == PODMAN_ID[:12]
    assert "containers.json is a symbolic link (not followed)" in result.stderr


def test_a_device_node_as_containers_json_is_refused(host: Host) -> None:
    """Reproduction: a character device (here /dev/zero's, made with mknod) where containers.json is expected: read
    until the size cap, as the link above. Now refused by what it is."""
    require_root("mknod of a character device")
    podman_process(host)
    (host.tree.root / STORE).mkdir(parents=True)
    os.mknod(host.tree.root / STORE / "containers.json", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    result = run_podman(host)
    completed(result)
    assert "containers.json is not a regular file but a character device" in result.stderr


def test_a_link_out_of_the_host_root_is_not_followed(host: Host, tmp_path: Path) -> None:
    """Reproduction: a container's config.json linked to a file outside the host root (here a forged bundle; on a
    node, e.g. ../../../../etc/shadow): the collector read it, and the forged pod became the process's owner."""
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.sandbox-name": "stolen", "io.kubernetes.cri.sandbox-namespace": "victim",
        "io.kubernetes.cri.sandbox-uid": "0" * 32, "io.kubernetes.cri.container-name": "x"}}))
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "trainer")
    config = next(host.tree.root.glob("run/containerd/**/config.json"))
    config.unlink()
    config.symlink_to(os.path.relpath(forged, config.parent))
    k8s.add_process(600, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(600)])]), timeout=HANG)
    completed(result)
    assert "stolen" not in result.text
    assert owner_of(result, 600)["pod"] == "trainer"  # from kubelet's pod-log directory


@pytest.mark.parametrize("target", ["relative", "absolute"])
def test_a_directory_link_resolves_inside_the_host_root(host: Host, tmp_path: Path, target: str) -> None:
    """Reproduction: a container's bundle directory linked out of the host root (`../../..` past it, or an absolute
    path): the collector read the config.json there. Now links resolve as if the host root were `/`, as they do
    for the node's own processes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.sandbox-name": "stolen", "io.kubernetes.cri.sandbox-namespace": "victim",
        "io.kubernetes.cri.sandbox-uid": "0" * 32, "io.kubernetes.cri.container-name": "x"}}))
    k8s = PodHost(host.tree)
    pod = k8s.add_pod("ml", "trainer")
    bundle = next(host.tree.root.glob("run/containerd/**/config.json")).parent
    for child in bundle.iterdir():
        child.unlink()
    bundle.rmdir()
    bundle.symlink_to(os.path.relpath(outside, bundle.parent) if target == "relative" else str(outside))
    k8s.add_process(600, pod)
    result = host.run(scenario([Gpu(0, compute=[proc(600)])]), timeout=HANG)
    completed(result)
    assert "stolen" not in result.text


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_links_resolve_inside_the_root_with_and_without_openat2(tmp_path: Path, openat2: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule on both paths of collector.safeio: openat2's RESOLVE_IN_ROOT, and the component walk used
    where the kernel (before 5.6) or a seccomp filter has no openat2."""
    monkeypatch.setattr(safeio, "_syscall", None if openat2 else False)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/inside.json").write_text("{}")
    (tmp_path / "outside.json").write_text("{}")
    (root / "a").mkdir()
    (root / "a/up").symlink_to("../../..")
    (root / "a/abs").symlink_to("/etc")
    assert safeio.read(str(root / "a/abs/inside.json"), 100, root=str(root)) == b"{}"  # /etc of the root
    with pytest.raises(FileNotFoundError):
        safeio.read(str(root / "a/up/outside.json"), 100, root=str(root))  # `..` stops at the root
    with pytest.raises(safeio.Refused, match="not under the host root"):
        safeio.read(str(tmp_path / "outside.json"), 100, root=str(root))


def test_a_60_mb_name_in_containers_json_is_refused(host: Host) -> None:
    """Reproduction: a rootless user's podman container named with 60 MB: the store was read whole (204 MiB RSS)
    and the name stored in the state (63 MB). Now the store is over its size cap and refused, logged."""
    podman_process(host)
    path = write_podman_store(host.tree, {PODMAN_ID: "vllm"})
    entries = json.loads(path.read_text())
    entries.append({"id": "b2" * 32, "names": ["x" * 60_000_000]})
    path.write_text(json.dumps(entries))
    result = run_podman(host)
    completed(result)
    assert owner_of(result, 300)["owner"] == PODMAN_ID[:12]
    assert "containers.json is larger than 8 MiB" in result.stderr
    assert (host.state_dir / "state.json").stat().st_size < 1 << 20


def test_a_200_mb_state_file_is_refused(host: Host) -> None:
    """Reproduction: a 200 MB state file was parsed whole (552 MiB RSS). Now it is over the state's size cap,
    refused, and the run starts afresh."""
    host.tree.add_process(100)
    host.state_dir.mkdir()
    with (host.state_dir / "state.json").open("wb") as f:
        f.write(b'{"version": 2, "last_seen_us": {')
        f.truncate(200_000_000)  # sparse: the size is what the cap looks at
    result = host.run(scenario([Gpu(0, compute=[proc(100)])]), timeout=HANG)
    completed(result)
    assert "state.json is larger than 8 MiB" in result.stderr


def test_many_pod_log_directories_are_read_up_to_a_bound(host: Host) -> None:
    """Reproduction: 100,000 directories under var/log/pods: every one was listed and each pod's own directory
    listed too (94 MiB, 3.3 s). Now at most the first 10,000 entries are read, and the cut is logged. (20,000
    here, on a tmpfs: enough to pass the bound, quick to make and remove.)"""
    k8s = PodHost(host.tree)
    logs = host.tree.root / "var/log/pods"
    logs.parent.mkdir(parents=True)
    with mounted_tmpfs(logs, "size=64m,nr_inodes=100k"):
        pod = k8s.add_pod("ml", "trainer", write_metadata=False)  # named by its pod-log directory only
        for i in range(20_000):
            (logs / f"ns_pod-{i}_{i:032x}").mkdir()
        k8s.add_process(600, pod)
        result = host.run(scenario([Gpu(0, compute=[proc(600)])]), timeout=HANG)
    completed(result)
    assert "var/log/pods holds more than 10000 entries; only the first 10000 are read" in result.stderr


# ---- the deadline covers the state file ----

def test_the_state_file_is_read_under_the_runs_deadline(tmp_path: Path) -> None:
    """Reproduction: the state file was read before the deadline timer started, so a read that never returns
    (a FIFO before collector.safeio; a hung network filesystem) held the run forever. Here the read blocks for
    good: the deadline still writes up 0 and ends the run (exit 4)."""
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    script = textwrap.dedent(f"""
        import threading
        from collector import runner, state
        from collector.settings import Settings
        state.load = lambda state_dir: threading.Event().wait()
        settings = Settings(textfile_dir={str(textfile)!r}, state_dir={str(tmp_path / 'state')!r}, deadline=1.0)
        raise SystemExit(runner.run_once(settings))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=HANG,
                            check=False)
    assert result.returncode == 4, result.stderr
    assert "gpu_proc_collector_up 0" in (textfile / "gpu_processes.prom").read_text()


# ---- the JSON bounds themselves ----

def test_json_nesting_is_bounded_exactly_and_brackets_in_strings_are_text() -> None:
    """MAX_JSON_DEPTH levels parse, one more is refused, whatever the stack depth of the caller (Python's own
    limit is about 1,000, less a caller's frames); brackets inside strings (escaped quotes and backslashes
    included) do not count."""
    depth = safeio.MAX_JSON_DEPTH
    assert safeio.parse_json(b"[" * depth + b"]" * depth) is not None
    with pytest.raises(safeio.Refused, match="nested deeper"):
        safeio.parse_json(b"[" * (depth + 1) + b"]" * (depth + 1))
    text = json.dumps(["[" * 100, '\\"[[' + "{" * 100, "\\", ["]]"] * 70]).encode()
    assert safeio.parse_json(text)[3] == ["]]"] * 70


def test_json_numbers_are_bounded() -> None:
    limit = safeio.MAX_INT_DIGITS
    assert safeio.parse_json(b"[%s, 1.5e300, -2]" % (b"9" * limit)) == [int("9" * limit), 1.5e300, -2]
    for bad in (b"9" * (limit + 1), b"-" + b"9" * (limit + 1), b"1e400", b"-Infinity", b"NaN"):
        with pytest.raises(safeio.Refused):
            safeio.parse_json(b"[%s]" % bad)
