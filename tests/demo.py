"""The README's demo host: an 8-GPU node, GPUs 6 and 7 in MIG mode, pods on most GPUs and one host process.

    python -m tests.demo DIR    builds DIR/host (a host tree) and DIR/scenario.json, prints the scenario's path
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.podsim import PodHost
from tests.support.simhost import GIB, Gpu, HostTree, mig_instance, proc, scenario, write_scenario

MIG_LAYOUT_7X1G = [(slot, 9 + slot, 0, "1g.10gb", 10) for slot in range(7)]
MIG_LAYOUT_MIXED = [(0, 1, 0, "3g.40gb", 40), (3, 5, 0, "2g.20gb", 20), (5, 13, 0, "1g.10gb", 10)]


def demo(root: Path) -> Path:
    """Builds the demo host under root; returns the scenario path."""
    tree = HostTree(root / "host")
    k8s = PodHost(tree)  # containerd 1.7, systemd cgroup driver, cgroup v2
    gpus = []
    pid = 4000
    for index in range(6):
        g = Gpu(index)
        for k in range(index % 3):  # GPUs 0 and 3 idle, others 1-2 processes
            pid += 1
            if index == 5 and k == 1:  # a host process next to a pod
                tree.add_process(pid, "python3", ["python3", "bench.py"], start_ticks=100000 + pid)
            else:
                pod = k8s.add_pod("ml-team", f"train-{index}-{k}", containers=["pytorch"])
                k8s.add_process(pid, pod)
            g.compute.append(proc(pid, (4 + 4 * k) * GIB))
            g.samples += [{"pid": pid, "age_s": age, "sm": 40 + 10 * k + age} for age in (3, 2, 1)]
        gpus.append(g)
    for index, layout in ((6, MIG_LAYOUT_7X1G), (7, MIG_LAYOUT_MIXED)):
        instances = []
        for n, (slot, gi, ci, profile, gib) in enumerate(layout):
            procs = []
            if n % 2 == 0:
                pid += 1
                pod = k8s.add_pod("inference", f"triton-{index}-{n}", containers=["tritonserver"], qos="guaranteed")
                k8s.add_process(pid, pod, comm="tritonserver")
                procs.append(proc(pid, (gib // 2) * GIB))
            instances.append(
                mig_instance(index, slot=slot, gi=gi, ci=ci, profile=profile, total_gib=gib, compute=procs)
            )
        gpus.append(Gpu(index, mig=instances))
    return write_scenario(root / "scenario.json", scenario(gpus))


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.demo DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    os.makedirs(root, exist_ok=True)
    print(demo(root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
