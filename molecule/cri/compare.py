"""Compares the collector's textfile from the guest with what containerd answered there (tests/realcri.py `pods`
wrote, per PID: the owner labels from ContainerStatus/PodSandboxStatus, the recorded linux.cgroupsPath and the
process's /proc cgroup). Run by verify.yml on the controller: compare.py ANSWERS TEXTFILE; exit 1 with the
differences.

Every listed process must have one gpu_process_memory_bytes series whose pod, namespace, container, owner_kind
and owner are containerd's; no series may be of another process or of no pod; each process must sit in the
systemd driver's expansion of its recorded cgroupsPath (or below it, for a forked child of the same container).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

KEYS = ("pod", "namespace", "container", "owner_kind", "owner")


def expanded(cgroups_path: str) -> str:
    """runc's systemd driver: `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>` is the scope
    `cri-containerd-<id>.scope` under the slice's nested path (one level per dash-separated prefix)."""
    slice_name, prefix, name = cgroups_path.split(":")
    parts = slice_name[: -len(".slice")].split("-")
    path = "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    return f"{path}/{prefix}-{name}.scope"


def main(answers_path: str, textfile: str) -> int:
    answers = json.loads(Path(answers_path).read_text())
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(Path(textfile).read_text()):
        for sample in family.samples:
            if sample.name == "gpu_process_memory_bytes":
                series.setdefault(sample.labels["pid"], []).append(dict(sample.labels))
    problems = []
    for pid, answer in sorted(answers.items()):
        found = series.get(pid, [])
        if len(found) != 1:
            problems.append(f"pid {pid}: {len(found)} series, want 1")
            continue
        got = {key: found[0].get(key, "") for key in KEYS}
        if got != answer["labels"]:
            problems.append(f"pid {pid}: collector {got}, containerd {answer['labels']}")
        where = expanded(answer["cgroups_path"])
        lines = answer["cgroup"].splitlines()
        if not all(line.split(":", 2)[2].endswith(where) for line in lines):
            problems.append(f"pid {pid}: cgroup {lines} is not {where} (recorded {answer['cgroups_path']})")
    problems += [f"pid {pid}: not one of containerd's processes: {labels}" for pid, labels in series.items()
                 if pid not in answers]
    for pid, answer in sorted(answers.items()):
        print(f"{pid} {answer['labels']['owner']} {answer['labels']['container']} {answer['cgroups_path']}")
    print(next(iter(answers.values()))["cgroup"])
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
