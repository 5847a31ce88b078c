#!/usr/bin/env bash
# The real-GPU check, for a session that is lent a GPU machine: the collector against the real driver, next to
# what nvidia-smi says, in one run. Needs .venv (carry it) and the NVIDIA driver; changes no GPU setting.
#   bench/device_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/device-check}}"
mkdir -p "$out"
{
    echo "== nvidia-smi -L"; nvidia-smi -L
    echo "== driver"; nvidia-smi --query-gpu=index,uuid,name,driver_version,mig.mode.current,memory.total,memory.used \
        --format=csv
    echo "== compute apps"; nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv
} >"$out/nvidia-smi.txt" 2>&1
.venv/bin/python -m collector --stdout --state-dir "$out/state" --log-level debug \
    >"$out/gpu_processes.prom" 2>"$out/collector.log"
echo "collector exit: $?" >>"$out/collector.log"
promtool check metrics <"$out/gpu_processes.prom" >>"$out/collector.log" 2>&1 || true
.venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path
from prometheus_client.parser import text_string_to_metric_families

out = Path(sys.argv[1])
families = {f.name: f for f in text_string_to_metric_families((out / "gpu_processes.prom").read_text())}
apps = [line for line in (out / "nvidia-smi.txt").read_text().split("== compute apps")[1].splitlines()[2:] if line]
pids_smi = sorted(line.split(",")[1].strip() for line in apps)
pids_us = sorted(s.labels["pid"] for s in families["gpu_process_info"].samples) if "gpu_process_info" in families else []
print("up:", families["gpu_proc_collector_up"].samples[0].value)
print("nvidia-smi pids:", pids_smi)
print("collector pids: ", pids_us)
print("same set:", set(pids_smi) == set(pids_us))
PY
