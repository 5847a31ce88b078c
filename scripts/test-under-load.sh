#!/usr/bin/env bash
# The test suite under load: two busy loops keep both cores of a 2-core machine busy while the whole pytest suite
# runs three times in a row. Every run must pass: no test may depend on the machine's speed or load (tests assert
# properties, never rates or wall times). Run after ./scripts/test.sh has set the machine up.
#   scripts/test-under-load.sh [RUNS] [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
shift || true
loops=()
for _ in 1 2; do
    (while :; do :; done) &
    loops+=("$!")
done
trap 'kill "${loops[@]}" 2>/dev/null || true' EXIT
for run in $(seq 1 "$runs"); do
    echo "== pytest run $run of $runs, with ${#loops[@]} busy loops"
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
done
