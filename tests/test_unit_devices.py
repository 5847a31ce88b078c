"""The unit's device allow-list, resolved the way systemd resolves it, against /proc/devices of two driver eras.

systemd (src/core/bpf-devices.c, bpf_devices_allow_list_major; cgroup.c for the dispatch) reads a `char-NAME`
entry at unit start: every line of /proc/devices' "Character devices:" section whose name fnmatch()es NAME
(flags 0, so `*`, `?` and `[...]` are globs) allows that whole major; `char-*` allows every char device and a
number allows that major. A `/dev/...` entry is stat()ed: that one node. A name that matches nothing allows nothing.
ProtectClock=yes adds `char-rtc r` of its own (visible in `systemd-analyze security` and `systemctl show`).

The fixtures are shaped like real files (`%3d %s` lines, a blank line before "Block devices:"):
- proc-devices-r470.txt: a driver before R545/550.40, where major 195 (/dev/nvidia0..N and /dev/nvidiactl) is
  named `nvidia-frontend`, beside nvidia-nvlink, nvidia-caps, nvidia-uvm and nvidia-nvswitch (the layout of an
  NVSwitch host's /proc/devices in foundation-model-stack/ocp-efa-operator's device-plugin tests, and in the test
  data of NVIDIA/nvidia-container-toolkit internal/info/proc/devices).
- proc-devices-r550.txt: 550.40 and later, where major 195 is registered twice, as `nvidia` (the GPUs' minors)
  and `nvidiactl` (minor 255) (NVIDIA/open-gpu-kernel-modules kernel-open/nvidia/nv.c, nvidia_init_module;
  the 550.40 release note quoted in NVIDIA/nvidia-container-toolkit#324), with `nvidia-caps-imex-channels`
  (NVIDIA/nvidia-modprobe#9, kubernetes-sigs/dra-driver-nvidia-gpu#304) beside nvidia-caps.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.support.role_render import render

FIXTURES = Path(__file__).parent / "fixtures"
DRIVERS = ("r470", "r550")
GPUS = 8


@dataclass(frozen=True)
class Node:
    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int


@dataclass(frozen=True)
class Rule:
    kind: str
    major: Optional[int]  # None: every major of that kind
    minor: Optional[int]  # None: every minor
    access: str

    def covers(self, node: Node) -> bool:
        return (self.kind == node.kind and self.major in (None, node.major)
                and self.minor in (None, node.minor))


def proc_devices(text: str) -> dict[str, list[tuple[int, str]]]:
    """{"c": [(major, name)], "b": [...]}, read as systemd reads it: a section header, then lines until a blank one."""
    sections: dict[str, list[tuple[int, str]]] = {"c": [], "b": []}
    current: Optional[str] = None
    for line in text.splitlines():
        if line == "Character devices:":
            current = "c"
        elif line == "Block devices:":
            current = "b"
        elif not line.strip():
            current = None
        elif current:
            major, _, name = line.strip().partition(" ")
            if major.isdigit() and int(major) > 0:
                sections[current].append((int(major), name.strip()))
    return sections


def device_allow(unit: str) -> tuple[str, list[tuple[str, str]]]:
    """(DevicePolicy=, [(spec, access)]) of the unit's [Service] section, with systemd's parsing rules: an empty
    assignment empties the list, access defaults to rwm and is a subset of rwm."""
    policy, entries, section, protect_clock = "auto", [], "", False
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), "line continuations are not expected in the unit"
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section != "[Service]":
            continue
        if key == "DevicePolicy":
            policy = value
        elif key == "ProtectClock":
            protect_clock = value in ("yes", "true", "on", "1")
        elif key == "DeviceAllow":
            if not value:
                entries = []
                continue
            spec, _, access = value.partition(" ")
            access = access.strip() or "rwm"
            assert re.fullmatch(r"[rwm]+", access), value
            assert spec.startswith(("/dev/", "char-", "block-")), f"systemd ignores {value!r}"
            assert "\\" not in spec, "fnmatch escapes are not modelled"
            entries.append((spec, access))
    if protect_clock:  # systemd.exec(5): ProtectClock=yes implies DeviceAllow=char-rtc r
        entries.append(("char-rtc", "r"))
    return policy, entries


def resolve(entries: list[tuple[str, str]], devices: dict[str, list[tuple[int, str]]],
            nodes: dict[str, Node]) -> list[Rule]:
    """The (type, major, minor, access) rules systemd would install for these entries on this host."""
    rules = []
    for spec, access in entries:
        if spec.startswith("/dev/"):
            node = nodes.get(spec)  # systemd stat()s it; a missing node is a warning and no rule
            if node is not None:
                rules.append(Rule(node.kind, node.major, node.minor, access))
            continue
        kind, name = ("c", spec[len("char-"):]) if spec.startswith("char-") else ("b", spec[len("block-"):])
        if name == "*":
            rules.append(Rule(kind, None, None, access))
        elif name.isdigit():
            rules.append(Rule(kind, int(name), None, access))
        else:
            rules.extend(Rule(kind, major, None, access) for major, listed in devices[kind]
                         if fnmatch.fnmatchcase(listed, name))
    return rules


def allowed(rules: list[Rule], node: Node) -> str:
    return "".join(sorted({a for rule in rules if rule.covers(node) for a in rule.access}))


def majors(devices: dict[str, list[tuple[int, str]]], name: str) -> int:
    found = {major for major, listed in devices["c"] if listed == name}
    assert len(found) == 1, (name, found)
    return found.pop()


def host_nodes(devices: dict[str, list[tuple[int, str]]]) -> tuple[dict[str, tuple[Node, str]], list[Node]]:
    """The NVIDIA nodes of a host with this /proc/devices: ({path: (node, access NVML needs)}, [nodes it must
    not reach]). GPU nodes are 195:N and /dev/nvidiactl 195:255 under either name; MIG capabilities are nodes of
    the nvidia-caps major, which NVML opens read-only (cap2 is mig/monitor, others GPU/compute-instance access)."""
    gpu = next(major for major, name in devices["c"] if name in ("nvidia-frontend", "nvidia"))
    caps = majors(devices, "nvidia-caps")
    uvm = majors(devices, "nvidia-uvm")
    needed = {"/dev/nvidiactl": (Node("/dev/nvidiactl", "c", gpu, 255), "rw")}
    for i in range(GPUS):
        needed[f"/dev/nvidia{i}"] = (Node(f"/dev/nvidia{i}", "c", gpu, i), "rw")
    for minor in (2, 21, 22, 66, 67):
        path = f"/dev/nvidia-caps/nvidia-cap{minor}"
        needed[path] = (Node(path, "c", caps, minor), "r")
    # Not NVML's: CUDA's unified memory and its profiler, NVSwitch/NVLink management (fabric manager), IMEX
    # channels (cross-node memory export): each has its own major.
    forbidden = [Node("/dev/nvidia-uvm", "c", uvm, 0), Node("/dev/nvidia-uvm-tools", "c", uvm, 1),
                 Node("/dev/nvidia-nvswitchctl", "c", majors(devices, "nvidia-nvswitch"), 255),
                 Node("/dev/nvidia-nvswitch0", "c", majors(devices, "nvidia-nvswitch"), 0),
                 Node("/dev/nvidia-nvlink", "c", majors(devices, "nvidia-nvlink"), 0)]
    if any(name == "nvidia-caps-imex-channels" for _, name in devices["c"]):
        imex = majors(devices, "nvidia-caps-imex-channels")
        forbidden.append(Node("/dev/nvidia-caps-imex-channels/channel0", "c", imex, 0))
    return needed, forbidden


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return render(tmp_path_factory.mktemp("role"))


@pytest.fixture(params=["default", "service"])
def unit(rendered: dict[str, dict[str, str]], request: pytest.FixtureRequest) -> str:
    """The unit of each mode (gpu_proc_collector_mode timer, the default, and service)."""
    return rendered[request.param]["gpu-proc-collector.service"]


def check(unit_text: str, driver: str) -> None:
    devices = proc_devices((FIXTURES / f"proc-devices-{driver}.txt").read_text())
    policy, entries = device_allow(unit_text)
    assert policy in ("closed", "strict"), f"DevicePolicy={policy} does not restrict /dev"
    needed, forbidden = host_nodes(devices)
    nodes = {path: node for path, (node, _) in needed.items()} | {n.path: n for n in forbidden}
    rules = resolve(entries, devices, nodes)

    for path, (node, access) in needed.items():
        assert allowed(rules, node) == access, f"{driver}: {path} ({node.major}:{node.minor}) needs exactly " \
            f"{access!r}, DeviceAllow= gives {allowed(rules, node)!r}: {entries}"
    for node in forbidden:
        assert not allowed(rules, node), f"{driver}: {node.path} must not be reachable: {entries}"
    # Nothing beyond the majors of the nodes NVML needs (and the RTC, read-only, which ProtectClock= adds): no
    # block device, no other char major, no mknod.
    needed_majors = {("c", node.major) for node, _ in needed.values()}
    rtc = ("c", majors(devices, "rtc"))
    assert {(rule.kind, rule.major) for rule in rules} - {rtc} <= needed_majors, rules
    assert all(rule.access == "r" for rule in rules if (rule.kind, rule.major) == rtc), rules
    assert all(rule.minor is None or rule.major is not None for rule in rules)
    assert not any("m" in rule.access for rule in rules), rules


@pytest.mark.slow
@pytest.mark.parametrize("driver", DRIVERS)
def test_the_unit_reaches_exactly_the_nodes_nvml_opens(unit: str, driver: str) -> None:
    check(unit, driver)


def with_device_allow(unit: str, entries: str) -> str:
    """The unit with its DeviceAllow= lines replaced by these, in the same place (in [Service])."""
    replaced, count = re.subn(r"(?m)(?:^DeviceAllow=.*\n)+", entries, unit)
    assert count == 1, "the unit's DeviceAllow= lines are expected in one block"
    return replaced


@pytest.mark.slow
def test_the_check_fails_for_the_pre_r545_name_alone(unit: str) -> None:
    """The guard the test above names: with only the old group name, R550+ GPUs are out of reach."""
    old = with_device_allow(unit, "DeviceAllow=char-nvidia-frontend rw\nDeviceAllow=char-nvidia-caps r\n")
    check(old, "r470")
    with pytest.raises(AssertionError, match=r"r550: /dev/nvidia(ctl|0) .* needs exactly 'rw'"):
        check(old, "r550")


@pytest.mark.slow
def test_a_broad_glob_would_reach_uvm_nvswitch_and_imex(unit: str) -> None:
    broad = with_device_allow(unit, "DeviceAllow=char-nvidia* rw\n")
    devices = proc_devices((FIXTURES / "proc-devices-r550.txt").read_text())
    _, forbidden = host_nodes(devices)
    rules = resolve(device_allow(broad)[1], devices, {n.path: n for n in forbidden})
    reached = {node.path for node in forbidden if allowed(rules, node)}
    assert {"/dev/nvidia-uvm", "/dev/nvidia-nvswitch0", "/dev/nvidia-caps-imex-channels/channel0"} <= reached
    with pytest.raises(AssertionError, match=r"nvidia-cap2 \(511:2\) needs exactly 'r'"):  # and writable caps
        check(broad, "r550")


def test_fixtures_are_shaped_like_proc_devices() -> None:
    for driver in DRIVERS:
        text = (FIXTURES / f"proc-devices-{driver}.txt").read_text()
        assert text.startswith("Character devices:\n")
        assert "\n\nBlock devices:\n" in text
        for line in text.splitlines():
            assert line in ("", "Character devices:", "Block devices:") or re.fullmatch(r"[ \d]{2}\d \S+", line), line
