"""Compares the collector's textfile from the guest with what the runtimes answered there, per PID: containerd's
(tests/support/realcri.py `pods`: the owner labels from ContainerStatus/PodSandboxStatus, the recorded linux.cgroupsPath
and the process's /proc cgroup) and podman's and Docker's (runtimes.py `start`: the labels from `podman inspect`
/ `docker inspect`, the cgroup path the runtime recorded or implies, the process's /proc cgroup). Run by
verify.yml on the controller: compare.py TEXTFILE ANSWERS...; exit 1 with the differences.

Every listed process must have one gpu_process_memory_bytes series whose pod, namespace, container, owner_kind
and owner are the runtime's; no series may be of another process; each process must sit where its runtime put
it: a CRI container in the systemd driver's expansion of its recorded cgroupsPath, a podman or Docker container
in its cgroup path (in the hierarchies systemd keeps: name=systemd and the unified one, which is where rootless
podman's container stays, in the scope it was started in). No device memory may be left unattributed and no
runtime file missed (gpu_proc_collector_metadata_misses).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

KEYS = ("pod", "namespace", "container", "owner_kind", "owner")


def expanded(cgroups_path: str) -> str:
    """runc's systemd driver: `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>` is the scope
    `cri-containerd-<id>.scope` under the slice's nested path (one level per dash-separated prefix)."""
    slice_name, prefix, name = cgroups_path.split(":")
    parts = slice_name[: -len(".slice")].split("-")
    path = "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    return f"{path}/{prefix}-{name}.scope"


def misplaced(answer: dict[str, str]) -> list[str]:
    """The lines of the process's cgroup file that are not where its runtime put it. A CRI container: every
    line ends in the systemd driver's expansion of the recorded cgroupsPath. A podman or Docker container: the
    name=systemd and unified lines end in its cgroup path, as podman records it less the `/..` steps it takes
    from a v1 controller's line read in the guest's cgroup namespace (docs/runtimes-and-cgroups.md section 10),
    or in that path and the container's id (the cgroup rootless podman's conmon makes in name=systemd)."""
    lines = answer["cgroup"].splitlines()
    if "cgroups_path" in answer:
        where = expanded(answer["cgroups_path"])
        return [line for line in lines if not line.split(":", 2)[2].endswith(where)]
    where = re.sub(r"^(/\.\.)+", "", answer["cgroup_path"])
    kept = [line for line in lines if line.split(":")[1] in ("name=systemd", "")]
    wrong = [line for line in kept
             if not line.split(":", 2)[2].endswith((where, f"{where}/{answer['id']}"))]
    return wrong if kept else lines


def main(textfile: str, *answers_paths: str) -> int:
    answers: dict[str, dict[str, Any]] = {}
    for answers_path in answers_paths:
        answers.update(json.loads(Path(answers_path).read_text()))
    series: dict[str, list[dict[str, str]]] = {}
    problems = []
    for family in text_string_to_metric_families(Path(textfile).read_text()):
        for sample in family.samples:
            if sample.name == "gpu_process_memory_bytes":
                series.setdefault(sample.labels["pid"], []).append(dict(sample.labels))
            if sample.name == "gpu_device_unattributed_memory_bytes" and sample.value:
                problems.append(f"memory no process accounts for: {sample.labels} {sample.value}")
            if sample.name == "gpu_proc_collector_metadata_misses" and sample.value:
                problems.append(f"runtime files the collector missed: {sample.labels} {sample.value}")
    for pid, answer in sorted(answers.items()):
        found = series.get(pid, [])
        if len(found) != 1:
            problems.append(f"pid {pid}: {len(found)} series, want 1")
            continue
        got = {key: found[0].get(key, "") for key in KEYS}
        if got != answer["labels"]:
            problems.append(f"pid {pid}: collector {got}, {answer.get('runtime', 'containerd')} {answer['labels']}")
        wrong = misplaced(answer)
        if wrong:
            where = answer.get("cgroups_path") or answer["cgroup_path"]
            problems.append(f"pid {pid}: cgroup {wrong} is not where the runtime put it ({where})")
    problems += [f"pid {pid}: not one of the runtimes' processes: {labels}" for pid, labels in series.items()
                 if pid not in answers]
    for pid, answer in sorted(answers.items()):
        print(f"{pid} {answer['labels']['owner_kind']} {answer['labels']['owner']} {answer['labels']['container']} "
              f"{answer.get('cgroups_path') or answer['cgroup_path']}")
        print("  " + " | ".join(answer["cgroup"].splitlines()))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
