"""The role's static contract: defaults and argument specs agree, the seed-compatible settings
(docs/seed-interface.md) translate for systemd."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

ROLE = REPO / "roles" / "gpu_proc_collector"


def _filters() -> Any:
    spec = importlib.util.spec_from_file_location("gpc_filters", ROLE / "filter_plugins" / "gpu_proc_collector.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


filters = _filters()


def test_defaults_and_argument_specs_have_the_same_keys_and_defaults() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert set(defaults) == set(specs)
    for name, spec in specs.items():
        assert name.startswith("gpu_proc_collector_")
        assert spec.get("description"), name
        if "default" in spec:
            assert spec["default"] == defaults[name], name
        else:
            assert defaults[name] is None, name


def test_design_variables_exist() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    for name in ("enabled", "schedule", "cpu_limit", "memory_limit", "devices", "gpu_count"):
        assert f"gpu_proc_collector_{name}" in defaults


@pytest.mark.parametrize(("cron", "calendar"), [
    ("*/1 * * * *", "*-*-* *:0/1:00"),
    ("*/2 * * * *", "*-*-* *:0/2:00"),
    ("0 * * * *", "*-*-* *:0:00"),
    ("30 2 * * 1-5", "Mon,Tue,Wed,Thu,Fri *-*-* 2:30:00"),
    ("15,45 9-17 * * *", "*-*-* 9..17:15,45:00"),
    ("0 0 1 */3 *", "*-1/3-1 0:0:00"),
    ("@hourly", "*-*-* *:0:00"),
    ("*:0/5", "*:0/5"),
    ("hourly", "hourly"),
])
def test_cron_schedules_become_oncalendar(cron: str, calendar: str) -> None:
    assert filters.cron_to_oncalendar(cron) == calendar


@pytest.mark.parametrize("bad", ["* * * *", "61 * * * *", "*/0 * * * *", "5-1 * * * *", "0 0 1 * 1", "x * * * *"])
def test_bad_cron_schedules_are_refused(bad: str) -> None:
    with pytest.raises(filters.CronError):
        filters.cron_to_oncalendar(bad)


def test_every_translated_schedule_is_valid_for_systemd() -> None:
    analyze = subprocess.run(["systemd-analyze", "--version"], capture_output=True, check=False)
    if analyze.returncode != 0:
        pytest.skip("systemd-analyze is not installed")
    for cron in ("*/1 * * * *", "30 2 * * 1-5", "15,45 9-17 * * *", "0 0 1 */3 *", "0 12 * jan,jul sun"):
        expr = filters.cron_to_oncalendar(cron)
        result = subprocess.run(["systemd-analyze", "calendar", expr], capture_output=True, text=True, check=False)
        assert result.returncode == 0, (cron, expr, result.stderr)


@pytest.mark.parametrize(("limit", "quota"), [("100m", "10%"), ("0.5", "50%"), ("2", "200%"), (1, "100%"),
                                              ("250m", "25%")])
def test_cpu_limits_become_cpuquota(limit: object, quota: str) -> None:
    assert filters.cpu_quota(limit) == quota


@pytest.mark.parametrize(("limit", "memory"), [("64Mi", "64M"), ("1Gi", "1G"), ("512Ki", "512K"),
                                               ("128M", "128000000"), ("1.5Gi", "1610612736"), ("1000", "1000")])
def test_memory_limits_become_memorymax(limit: str, memory: str) -> None:
    assert filters.memory_max(limit) == memory


@pytest.mark.parametrize("bad", ["", "64MB", "-1", "lots"])
def test_bad_memory_limits_are_refused(bad: str) -> None:
    with pytest.raises(filters.CronError):
        filters.memory_max(bad)


def test_the_unit_template_keeps_the_hardening_style_asks_for() -> None:
    unit = (ROLE / "templates" / "gpu-proc-collector.service.j2").read_text()
    for directive in ("Type=oneshot", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=",
                      "ProtectHome=yes", "PrivateTmp=yes", "ProtectKernelTunables=yes", "ProtectControlGroups=yes",
                      "RestrictSUIDSGID=yes", "LockPersonality=yes", "CapabilityBoundingSet=", "TimeoutStartSec=",
                      "CPUQuota=", "MemoryMax="):
        assert directive in unit
    assert not any(line.startswith("PrivateDevices=") for line in unit.splitlines())  # it hides /dev/nvidia*
    assert unit.startswith("{{ ansible_managed | comment }}")


def test_yaml_files_parse() -> None:
    for path in [*ROLE.rglob("*.yml"), *Path(REPO, "molecule").rglob("*.yml"), REPO / "playbooks" / "site.yml"]:
        yaml.safe_load(path.read_text())


def test_the_readme_lists_every_role_variable() -> None:
    readme = (REPO / "README.md").read_text()
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    missing = [name for name in specs if f"| `{name}` |" not in readme]
    assert missing == []
