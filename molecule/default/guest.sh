#!/usr/bin/env bash
# A booted systemd guest for Molecule: a debootstrapped root of the release asked for (Debian bullseye, bookworm or
# trixie, Ubuntu jammy or noble; cached per release, rebuilt when missing), an overlay per guest so the base stays
# clean, started with `systemd-nspawn --boot` on the host's network, reached by SSH on a loopback port. Why nspawn:
# it boots a real systemd as PID 1 in ~2 s and needs no KVM, where qemu under TCG (software emulation) is ~7x
# slower on a 2-core host.
#
#   guest.sh create NAME PORT PUBKEY [RELEASE]   boot a guest (default bookworm), its sshd on 127.0.0.1:PORT
#   guest.sh destroy NAME                        stop it, remove its overlay and its cgroup
#
# GPC_GUEST_RUNTIMES=1 (molecule/cri): a guest where runc can make containers with the systemd cgroup driver
# (runtime_guest below).
#
# Guests of one release share its base root; guests are created in parallel (create.yml), so the first to need a
# base builds it under a lock and the others wait for it.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) (base_root) stops the script too

CACHE="${GPC_GUEST_CACHE:-/var/cache/gpu-proc-collector-molecule}"
RUNDIR="${GPC_GUEST_RUNDIR:-/var/tmp/gpu-proc-collector-molecule}"
DEBIAN_MIRROR="${GPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
UBUNTU_MIRROR="${GPC_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
PACKAGES="systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,procps,ca-certificates,apt"

log() { echo "guest.sh: $*" >&2; }

# The base root of a release, built by debootstrap when missing (about a minute each, once). Prints its path.
base_root() {
    local release="$1" mirror components=main script=""
    case "$release" in
        bullseye | bookworm | trixie) mirror="$DEBIAN_MIRROR" ;;
        # node_exporter is in Ubuntu's universe. Every Ubuntu release since 7.10 bootstraps with the same script,
        # and Debian 12's debootstrap has none named after 24.04.
        jammy | noble) mirror="$UBUNTU_MIRROR" components=main,universe script=/usr/share/debootstrap/scripts/gutsy ;;
        *) log "unknown release $release (bullseye, bookworm, trixie, jammy or noble)"; exit 2 ;;
    esac
    local base
    base="$CACHE/$release-$(echo "$PACKAGES $mirror $components" | sha256sum | cut -c1-12)"
    mkdir -p "$CACHE"
    (
        flock 9
        if [ ! -e "$base/.complete" ]; then
            log "building the $release base root in $base (about a minute, once)"
            rm -rf "$base.tmp"
            # shellcheck disable=SC2086  # $script: no argument when empty
            debootstrap --variant=minbase --components="$components" --include="$PACKAGES" \
                "$release" "$base.tmp" "$mirror" $script \
                >"$CACHE/debootstrap-$release.log" 2>&1 \
                || { tail -20 "$CACHE/debootstrap-$release.log" >&2; exit 1; }
            rm -rf "$base"
            mv "$base.tmp" "$base"
            touch "$base/.complete"
        fi
    ) 9>"$base.lock"
    echo "$base"
}

# Moves the calling process into a cgroup of the guest's own, in the hierarchies the guest's systemd writes to
# (the named systemd one and the unified one on a cgroup v1 host, the unified one on a v2 host). Without a
# registration (--keep-unit), nspawn puts the container's cgroups under its caller's (/payload): guests started from
# one process share /system.slice/<unit>, and one guest's systemd removes or recreates the cgroup another's service
# is joining. Seen with three guests converging at once: "Failed to kill control group
# /system.slice/gpu-proc-collector.service, ignoring: Input/output error" and the run failing with 219/CGROUP.
own_cgroup() {
    local dir="$1" id hierarchy path mount group
    while IFS=: read -r id hierarchy path; do
        case "$id:$hierarchy" in
            *:name=systemd) mount=/sys/fs/cgroup/systemd ;;
            0:) mount=/sys/fs/cgroup/unified; [ -f "$mount/cgroup.procs" ] || mount=/sys/fs/cgroup ;;
            *) continue ;;
        esac
        [ -f "$mount/cgroup.procs" ] || continue
        group="$mount${path%/}/gpc-guest-$(basename "$dir")"
        mkdir -p "$group"
        echo "$BASHPID" >"$group/cgroup.procs" || { log "cannot move into $group"; exit 1; }
        echo "$group" >>"$dir/cgroups"
    done </proc/self/cgroup
    [ -s "$dir/cgroups" ] || { log "found no cgroup hierarchy to give the guest its own cgroup in"; exit 1; }
}

# What runc needs in an nspawn guest on a cgroup v1 (hybrid) host, each found by its failure there:
# - nspawn mounts the v1 controller hierarchies read-only ("unable to apply cgroup configuration: mkdir
#   /sys/fs/cgroup/cpuset/kubepods.slice: read-only file system"); SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 does not
#   change that, and a --bind onto /sys/fs/cgroup/<controller> fails (nspawn mounts its cgroup tmpfs after the
#   binds). So the host's /sys/fs/cgroup is bound to /opt/host-cgroup, and a unit the guest runs early binds each
#   controller from there over the read-only one; the guest's own systemd and unified hierarchies stay nspawn's.
# - nspawn's seccomp filter denies the keyring calls ("unable to join session keyring: unable to create session
#   key: operation not permitted"): --system-call-filter=@keyring.
# - without --private-network nspawn drops CAP_NET_ADMIN, so runc cannot bring up a new network namespace's
#   loopback ("error during container init: operation not permitted", RTM_NEWLINK answered EPERM).
# - the guest's root is an overlay, on which containerd's overlayfs snapshotter cannot make its own ("failed to
#   mount rootfs component &{overlay overlay [index=off workdir=...]}: invalid argument"): /var/lib/containerd is
#   a directory of the host's, bound in.
# runc then makes the container's cgroups in the host's controller hierarchies (kubepods.slice/...); the ones
# this guest created are removed at destroy. The host's downloaded packages are bound read-only at
# /run/gpc-host-archives, for the guest to install the runtimes from (molecule/cri/prepare.yml).
runtime_args() {
    local dir="$1"
    mkdir -p "$dir/containerd"
    local archives=""
    [ ! -d /var/cache/apt/archives ] || archives=--bind-ro=/var/cache/apt/archives:/run/gpc-host-archives
    echo --bind=/sys/fs/cgroup:/opt/host-cgroup --bind="$dir/containerd:/var/lib/containerd" \
        --system-call-filter=@keyring --capability=CAP_NET_ADMIN $archives
}

runtime_guest() {
    local root="$1" dir="$2" mount
    cat >"$root/etc/systemd/system/gpc-host-cgroup.service" <<'UNIT'
[Unit]
Description=Writable cgroup v1 controllers for container runtimes (the host's, bound by guest.sh)
DefaultDependencies=no
Before=sysinit.target
ConditionPathIsMountPoint=/opt/host-cgroup

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /opt/host-cgroup/*; do n=$${c##*/}; case $$n in systemd|unified) continue;; esac; [ ! -L "$$c" ] && mountpoint -q "$$c" && [ -d "/sys/fs/cgroup/$$n" ] && mount --bind "$$c" "/sys/fs/cgroup/$$n"; done; true'

[Install]
WantedBy=sysinit.target
UNIT
    mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
    ln -sf ../gpc-host-cgroup.service "$root/etc/systemd/system/sysinit.target.wants/gpc-host-cgroup.service"
    # The trees the runtimes in this guest will make in the host's controller hierarchies, where none is yet:
    # containerd's pods (kubepods.slice), podman's containers (machine.slice), Docker's (system.slice).
    local top
    for mount in /sys/fs/cgroup/*/; do
        for top in kubepods.slice machine.slice system.slice; do
            [ -L "${mount%/}" ] || [ -e "$mount$top" ] || echo "$mount$top" >>"$dir/runtime-cgroups"
        done
    done
}

create() {
    local name="$1" port="$2" pubkey="$3" release="${4:-bookworm}"
    local dir="$RUNDIR/$name"
    local BASE
    BASE="$(base_root "$release")"
    destroy "$name" 2>/dev/null || true
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
    local root="$dir/root"
    echo "$name" >"$root/etc/hostname"
    : >"$root/etc/machine-id"
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"
    cat >"$root/etc/ssh/sshd_config.d/molecule.conf" <<CONF
Port $port
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
CONF
    # Units that wait for hardware or consoles a container lacks.
    for unit in getty@tty1.service console-getty.service systemd-networkd-wait-online.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # replace-host: Ubuntu 22.04's /etc/resolv.conf is a link to systemd-resolved's stub, which has no upstream
    # server in a guest without a network manager (apt failed: "Temporary failure resolving"); a copy of the
    # host's file replaces the link.
    local extra=()
    if [ "${GPC_GUEST_RUNTIMES:-0}" = 1 ]; then
        runtime_guest "$root" "$dir"
        read -r -a extra <<<"$(runtime_args "$dir")"
    fi
    (
        own_cgroup "$dir"
        exec setsid systemd-nspawn --boot --register=no --keep-unit --console=passive --resolv-conf=replace-host \
            "${extra[@]}" --machine="$name" --directory="$root" </dev/null >"$dir/console.log" 2>&1
    ) &
    echo $! >"$dir/nspawn.pid"
    for _ in $(seq 1 120); do
        if ! kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null; then
            log "systemd-nspawn exited:"; tail -20 "$dir/console.log" >&2; exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            log "$name is up (sshd on 127.0.0.1:$port)"
            return
        fi
        sleep 0.5
    done
    log "$name did not start sshd in 60 s:"; tail -20 "$dir/console.log" >&2
    exit 1
}

destroy() {
    local name="$1"
    local dir="$RUNDIR/$name"
    [ -d "$dir" ] || return 0
    if [ -f "$dir/nspawn.pid" ]; then
        local pid
        pid="$(cat "$dir/nspawn.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"  # nspawn asks the guest's systemd for an orderly poweroff
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            # A killed nspawn leaves its guest running: kill the guest's init (nspawn's child) first, which ends
            # every process in the guest's PID namespace, containers included.
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if mountpoint -q "$dir/root"; then
        umount "$dir/root" || umount -l "$dir/root"
    fi
    local list group
    for list in "$dir/cgroups" "$dir/runtime-cgroups"; do
        [ -f "$list" ] || continue
        while read -r group; do
            find "$group" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done <"$list"
    done
    rm -rf "$dir"
}

case "${1:-}" in
    create) create "$2" "$3" "$4" "${5:-bookworm}" ;;
    destroy) destroy "$2" ;;
    *) echo "usage: $0 create NAME PORT PUBKEY [RELEASE] | destroy NAME" >&2; exit 2 ;;
esac
