#!/usr/bin/env bash
# The real-GPU check, for a host with an NVIDIA GPU (docs/real-gpu-check.md): known GPU work (libcuda through
# ctypes, no CUDA toolkit), the collector's answer about it, nvidia-smi's, and what NVML itself records.
# Needs the NVIDIA driver and a Python with the collector's dependencies (.venv, or the lean bench/out/venv the doc
# shows how to make and copy); changes no GPU setting; done in under 5 minutes.
#   bench/device_check.sh [OUTDIR] [--stand-in | --stand-in-mig] [--interval SECONDS]
# OUTDIR defaults to $OUT, then /tmp/device-check. Exit 0: every check passed; 1: one failed; 2: could not start.
# DEVICE_CHECK_STAND_IN=1 is --stand-in (no GPU: the stand-in NVML library and a fake nvidia-smi).
set -uo pipefail
out="${OUT:-/tmp/device-check}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out="$1"
    shift
fi
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
cd "$(dirname "$0")/.." || exit 2
# The Python that runs everything: $DEVICE_CHECK_PYTHON, else .venv (scripts/demo.sh makes it), else the lean
# bench/out/venv of docs/real-gpu-check.md; the first that has the collector's dependencies.
py=""
: >"$out/python.log"
for candidate in ${DEVICE_CHECK_PYTHON:-.venv/bin/python bench/out/venv/bin/python}; do
    if "$candidate" -c 'import pynvml, prometheus_client, psutil' 2>>"$out/python.log"; then
        py="$candidate"
        break
    fi
done
if [ -z "$py" ]; then
    echo "device-check: cannot start: no Python here imports pynvml, prometheus_client and psutil (tried" \
        "${DEVICE_CHECK_PYTHON:-.venv/bin/python bench/out/venv/bin/python}; see $out/python.log and" \
        "docs/real-gpu-check.md)" | tee "$out/device-check.md" >&2
    exit 2
fi

pids="$out/worker-pids"
: >"$pids"
cleanup() {  # the workers the check started, should it die before stopping them (they also die with it)
    local pid
    while read -r pid; do
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'device_check.py worker'; then
            kill "$pid" 2>/dev/null
        fi
    done <"$pids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

timeout -k 10 "${DEVICE_CHECK_TIMEOUT:-285}" "$py" bench/device_check.py run --out "$out" "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "device-check: FAIL: timed out after ${DEVICE_CHECK_TIMEOUT:-285} s" >&2
exit "$rc"
