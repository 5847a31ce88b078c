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

# What the tests hold the collector to besides the stand-in: the oldest nvidia-ml-py pyproject.toml allows and the
# newest one, as wheels the tests install offline (tests/test_nvml_versions.py), and the real libnvidia-ml.so.1 of
# two driver generations (tests/test_real_library.py). Kept under .venv/cache, fetched once.
CACHE="$REPO/.venv/cache"

fetch_pynvml_wheels() {
    local floor
    floor="$(sed -n 's/^ *"nvidia-ml-py>=\([0-9.]*\)".*/\1/p' pyproject.toml)"
    [ -n "$floor" ] || { echo "setup: no nvidia-ml-py floor in pyproject.toml" >&2; exit 1; }
    local dir="$CACHE/nvidia-ml-py"
    if ! ls "$dir/oldest/nvidia_ml_py-$floor-"*.whl >/dev/null 2>&1; then
        rm -rf "$dir/oldest"
        echo "setup: downloading nvidia-ml-py $floor (the oldest pyproject.toml allows)" >&2
        .venv/bin/python -m pip download -q --no-deps -d "$dir/oldest" "nvidia-ml-py==$floor" >&2
    fi
    if ! ls "$dir/newest/"*.whl >/dev/null 2>&1; then
        echo "setup: downloading the newest nvidia-ml-py" >&2
        .venv/bin/python -m pip download -q --no-deps -d "$dir/newest" nvidia-ml-py >&2
    fi
}

# Debian's libnvidia-ml1 (non-free): 535.x in bookworm, 550.x in trixie. apt reads a sources list, package lists
# and a download cache of its own under $CACHE/apt: the machine's apt sources stay as they are.
fetch_real_nvml() {
    local release
    for release in bookworm trixie; do
        local dest="$CACHE/libnvidia-ml/$release"
        ls "$dest"/usr/lib/*/nvidia/current/libnvidia-ml.so.1 >/dev/null 2>&1 && continue
        command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
            || { echo "setup: apt-get and dpkg-deb are needed to fetch libnvidia-ml1" >&2; exit 1; }
        [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install debian-archive-keyring
        local apt="$CACHE/apt/$release"
        rm -rf "$apt" "$dest"
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$dest"
        # The Debian archive the machine's own sources name (its mirror), with the other release's suites.
        local mirror suite
        mirror="$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(LABEL)' 2>/dev/null \
                  | awk '$2 == "Debian" && $3 == "Debian" {print $1; exit}')"
        [ -n "$mirror" ] || { echo "setup: no Debian archive in the apt sources to fetch libnvidia-ml1 from" >&2; exit 1; }
        for suite in "$release" "$release-updates"; do
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite non-free"
        done >"$apt/sources.list"
        local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/none"
                    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
        echo "setup: downloading Debian $release's libnvidia-ml1 (the real NVML library)" >&2
        apt-get "${opts[@]}" update -qq >&2
        (cd "$apt/debs" && apt-get "${opts[@]}" download -qq libnvidia-ml1 >&2)
        dpkg-deb -x "$apt/debs/"libnvidia-ml1_*.deb "$dest"
        rm -rf "$apt/lists" "$apt/cache"
    done
}
