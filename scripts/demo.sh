#!/usr/bin/env bash
# The main job on an embedded default: one collection on a simulated 8-GPU host (the stand-in NVML library with a
# bundled scenario, GPUs 6 and 7 in MIG mode, a fake host tree), printing the metrics it would write.
source "$(dirname "$0")/setup.sh"
ensure_python
ensure_venv test
build_fake_nvml
DEMO="$REPO/.demo"
rm -rf "$DEMO"
scenario="$(.venv/bin/python -m tests.demo "$DEMO")"
LD_LIBRARY_PATH="$REPO/tests/fake_nvml" FAKE_NVML_SCENARIO="$scenario" \
    .venv/bin/gpu-proc-collector --stdout --host-root "$DEMO/host" --state-dir "$DEMO/state" "$@"
