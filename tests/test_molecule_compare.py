"""molecule/cri/compare.py, the check `molecule test -s cri` ends with, on answers shaped as containerd's
(tests/support/realcri.py) and podman's and Docker's (molecule/cri/runtimes.py) are in that guest: each of its refusals
is exercised here, so a check that stopped refusing would be seen without booting a guest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO

ID = "8f8d954b7ad85e94e1cb71c66b7d4b589d4f214c95c1bf7f260d09c6fcd313af"
POD = "94b8b6d6_a73d_4830_987a_27afcf67c614"
UID = "1000"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare", REPO / "molecule" / "cri" / "compare.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cgroup(path: str, systemd: str = "", memory: str = "") -> str:
    """A hybrid /proc/<pid>/cgroup as a guest process shows it (the memory line through a deeper namespace root)."""
    return (f"9:name=systemd:{systemd or path}\n4:memory:{memory or '/../..' + path}\n1:cpu:{path}\n"
            f"0::{path}\n")


def answers() -> tuple[dict[str, Any], dict[str, Any]]:
    scope = f"/user.slice/user-{UID}.slice/user@{UID}.service/app.slice/gpc-notebook.scope"
    cri = {"100": {"labels": {"pod": "trainer", "namespace": "ml", "container": "main", "owner_kind": "pod",
                              "owner": "ml/trainer"},
                   "cgroups_path": f"kubepods-burstable-pod{POD}.slice:cri-containerd:{ID}",
                   "cgroup": cgroup(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice/"
                                    f"cri-containerd-{ID}.scope")}}
    engines = {
        "200": {"labels": {"pod": "", "namespace": "", "container": "", "owner_kind": "podman", "owner": "vllm"},
                "runtime": "podman", "id": ID, "cgroup_path": f"/../../machine.slice/libpod-{ID}.scope",
                "cgroup": cgroup(f"/machine.slice/libpod-{ID}.scope")},
        "300": {"labels": {"pod": "", "namespace": "", "container": "", "owner_kind": "host",
                           "owner": f"user-{UID}"},
                "runtime": "rootless podman", "id": ID, "cgroup_path": scope,
                "cgroup": cgroup(scope, systemd=f"{scope}/{ID}", memory="/")},
        "400": {"labels": {"pod": "", "namespace": "", "container": "", "owner_kind": "docker", "owner": "trainer"},
                "runtime": "docker", "id": ID, "cgroup_path": f"/system.slice/docker-{ID}.scope",
                "cgroup": cgroup(f"/system.slice/docker-{ID}.scope")},
    }
    return cri, engines


def textfile(cri: dict[str, Any], engines: dict[str, Any], unattributed: int = 0, missed: int = 0) -> str:
    lines = ["# TYPE gpu_process_memory_bytes gauge"]
    for pid, answer in {**cri, **engines}.items():
        labels = ",".join(f'{key}="{value}"' for key, value in answer["labels"].items())
        lines.append(f'gpu_process_memory_bytes{{gpu="0",pid="{pid}",{labels}}} 1073741824')
    lines += ["# TYPE gpu_device_unattributed_memory_bytes gauge",
              f'gpu_device_unattributed_memory_bytes{{gpu="0"}} {unattributed}',
              "# TYPE gpu_proc_collector_metadata_misses gauge",
              f'gpu_proc_collector_metadata_misses{{reason="not_found"}} {missed}']
    return "\n".join(lines) + "\n"


def run(tmp_path: Path, text: str, cri: dict[str, Any], engines: dict[str, Any]) -> int:
    (tmp_path / "t.prom").write_text(text)
    (tmp_path / "cri.json").write_text(json.dumps(cri))
    (tmp_path / "engines.json").write_text(json.dumps(engines))
    code: int = load().main(str(tmp_path / "t.prom"), str(tmp_path / "cri.json"), str(tmp_path / "engines.json"))
    return code


def test_every_runtime_where_it_put_its_container_passes(tmp_path: Path) -> None:
    cri, engines = answers()
    assert run(tmp_path, textfile(cri, engines), cri, engines) == 0


@pytest.mark.parametrize("pid", ["100", "200", "300", "400"])
def test_a_label_other_than_the_runtimes_answer_fails(tmp_path: Path, pid: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cri, engines = answers()
    wrong = json.loads(json.dumps({**cri, **engines}))
    wrong[pid]["labels"]["owner_kind"] = "container"
    assert run(tmp_path, textfile({}, wrong), cri, engines) == 1
    assert f"pid {pid}: collector" in capsys.readouterr().err


def test_a_missing_or_extra_process_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cri, engines = answers()
    fewer = {pid: answer for pid, answer in engines.items() if pid != "400"}
    assert run(tmp_path, textfile(cri, fewer), cri, engines) == 1
    assert "pid 400: 0 series, want 1" in capsys.readouterr().err
    assert run(tmp_path, textfile(cri, engines), cri, fewer) == 1
    assert "pid 400: not one of the runtimes' processes" in capsys.readouterr().err


def test_unattributed_memory_or_a_missed_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cri, engines = answers()
    assert run(tmp_path, textfile(cri, engines, unattributed=5), cri, engines) == 1
    assert "memory no process accounts for" in capsys.readouterr().err
    assert run(tmp_path, textfile(cri, engines, missed=1), cri, engines) == 1
    assert "runtime files the collector missed" in capsys.readouterr().err


@pytest.mark.parametrize("pid", ["100", "200", "300", "400"])
def test_a_process_elsewhere_than_its_runtime_put_it_fails(tmp_path: Path, pid: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cri, engines = answers()
    moved = json.loads(json.dumps(cri if pid == "100" else engines))
    moved[pid]["cgroup"] = moved[pid]["cgroup"].replace(ID, ID[::-1])
    assert run(tmp_path, textfile(cri, engines), *((moved, engines) if pid == "100" else (cri, moved))) == 1
    assert f"pid {pid}: cgroup" in capsys.readouterr().err


def test_a_podman_or_docker_process_with_no_systemd_or_unified_line_fails(tmp_path: Path) -> None:
    """Only those two lines are checked for podman and Docker: a file with neither proves nothing, so it fails."""
    cri, engines = answers()
    engines["400"]["cgroup"] = f"1:cpu:/system.slice/docker-{ID}.scope\n"
    assert run(tmp_path, textfile(cri, engines), cri, engines) == 1
