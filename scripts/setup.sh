# Sourced by demo.sh and test.sh: installs what a fresh Debian/Ubuntu machine lacks, then the project's
# virtualenv (.venv) and the stand-in NVML library. Safe to run again: it only installs what is missing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

apt_install() {  # apt_install PACKAGE... : installs those not yet installed
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install_services() {  # apt_install_services PACKAGE... : apt_install, without starting the packages' services
    # Where PID 1 is not systemd, invoke-rc.d runs a package's init script at install: docker.io's would start a
    # dockerd on /var/lib/docker with its bridge and iptables rules. The tests start their own daemons.
    local policy=/usr/sbin/policy-rc.d sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -e "$policy" ]; then
        apt_install "$@"
        return
    fi
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    local status=0
    apt_install "$@" || status=$?
    $sudo rm -f "$policy"
    return "$status"
}

ensure_python() {
    command -v cc >/dev/null && command -v make >/dev/null || apt_install gcc make libc6-dev
    if ! command -v python3 >/dev/null || ! python3 -m venv --help >/dev/null 2>&1; then
        apt_install python3 python3-venv python3-dev
    fi
}

ensure_venv() {  # ensure_venv EXTRAS : .venv with the collector installed (editable) and those extras
    local extras="$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    local stamp=".venv/.installed-$extras"
    if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "setup: installing the collector and its Python dependencies into .venv" >&2
        if ! .venv/bin/python -m pip install -e ".[$extras]" >.venv/pip.log 2>&1; then
            tail -n 40 .venv/pip.log >&2
            exit 1
        fi
        touch "$stamp"
    fi
}

build_fake_nvml() {
    make -s -C tests/fake_nvml
}
