"""NVML for the collector: the only package that imports pynvml.

Why it exists: it turns NVML into frozen records (collector.model): the monitored devices (whole GPUs and MIG
instances), their processes with the compute, graphics and MPS lists merged, per-process SM utilisation from the
samples newer than the previous run's, and GPM device activity. Errors leave it in two shapes only:
`NvmlUnavailable` when NVML as a whole cannot be used, and `FailedGpu` records for GPUs that failed while the
others were read.

Its modules, one job each (docs/nvml-driver.md, "Where the NVML code lives"):

- `query`: the one helper NVML calls go through, and the error policy it owns (a missing function logged once
  and defaulted, NOT_SUPPORTED defaulted, a lost GPU raised as `GpuLost`);
- `compat`: what differs between drivers: the `_v3`/`_v2` process lists, early R535's 32-byte entries, memory
  info v2/v1, and what the nvidia-ml-py floor rests on;
- `devices`: one GPU's read (its MIG instances, memory, processes, energy, minor number) into model records,
  failing that GPU alone;
- `sampling`: per-process utilisation samples, which to believe, time weighting, the long-running integrator;
- `gpm`: GPM sample pairs and their metrics;
- `mig_nodes`: the MIG capability device nodes NVML needs, read from the driver's files;
- `session`: NVML's life cycle (init, read, shutdown, restart after a broken read);
- `inventory`: what `--check` reports, through the session; imported by collector.check only, not re-exported
  here, so a timer run does not import it.
"""

from __future__ import annotations

from collector.nvml.compat import PROCESS_LISTS
from collector.nvml.gpm import GPM_INTERVAL_S
from collector.nvml.mig_nodes import MissingNode, describe_missing_nodes, missing_capability_nodes, use_host_root
from collector.nvml.sampling import Activity, carried_last_seen, time_weighted
from collector.nvml.session import NvmlUnavailable, Session, read_snapshot

__all__ = [
    "GPM_INTERVAL_S",
    "PROCESS_LISTS",
    "Activity",
    "MissingNode",
    "NvmlUnavailable",
    "Session",
    "carried_last_seen",
    "describe_missing_nodes",
    "missing_capability_nodes",
    "read_snapshot",
    "time_weighted",
    "use_host_root",
]
