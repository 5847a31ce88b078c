#!/usr/bin/env bash
# Installs everything on a fresh Debian/Ubuntu machine, then runs every check and test. CI runs exactly this.
# Needs root (or sudo) for apt and for the Molecule guest (debootstrap, an overlay mount, systemd-nspawn).
# Extra arguments go to pytest.
source "$(dirname "$0")/setup.sh"
ensure_python
apt_install prometheus prometheus-node-exporter systemd-container debootstrap openssh-client time
# real container runtimes (tests/test_real_runtimes.py, tests/test_runtime_containerd.py), busybox for their images
apt_install_services containerd podman crun runc uidmap slirp4netns fuse-overlayfs docker.io busybox-static
ensure_venv dev,role
fetch_pynvml_wheels
fetch_real_nvml
build_fake_nvml
export PATH="$REPO/.venv/bin:$PATH" NO_COLOR=1 ANSIBLE_NOCOLOR=1
echo "== ruff";         ruff check .
echo "== mypy";         mypy
echo "== yamllint";     yamllint --strict .
echo "== ansible-lint"; ansible-lint --nocolor
echo "== molecule";     molecule test                  # timer and service modes on Debian 11, 12, 13, Ubuntu 22.04, 24.04 guests
echo "== molecule";     molecule test -s collection    # the built collection, by its full name
echo "== molecule";     molecule test -s rollout       # three guests, the second without NVML: the rollout stops
echo "== molecule";     molecule test -s cri           # pods a real containerd makes through CRI, systemd cgroup driver
echo "== pytest";       python -m pytest "$@"
