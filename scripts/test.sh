#!/usr/bin/env bash
# Installs everything on a fresh Debian/Ubuntu machine, then runs every check and test. CI runs exactly this.
source "$(dirname "$0")/setup.sh"
ensure_python
apt_install prometheus prometheus-node-exporter
ensure_venv dev
build_fake_nvml
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest "$@"
