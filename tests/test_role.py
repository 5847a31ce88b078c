"""The role's static contract: defaults and argument specs agree, the seed-compatible settings
(docs/seed-interface.md) translate for systemd."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.role_render import render

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


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return render(tmp_path_factory.mktemp("role"))


def test_the_units_carry_the_translated_schedule_and_limits(rendered: dict[str, dict[str, str]]) -> None:
    for variant, calendar, quota, memory in (("default", "*-*-* *:0/1:00", "10%", "64M"),
                                             ("full", "*-*-* *:0/5:00", "25%", "128M")):
        service = rendered[variant]["gpu-proc-collector.service"].splitlines()
        assert f"CPUQuota={quota}" in service, variant
        assert f"MemoryMax={memory}" in service, variant
        assert f"OnCalendar={calendar}" in rendered[variant]["gpu-proc-collector.timer"].splitlines(), variant


@pytest.mark.parametrize("variant", ["default", "full"])
def test_the_config_template_writes_only_what_the_collector_accepts(
        rendered: dict[str, dict[str, str]], variant: str, tmp_path: Path) -> None:
    """The contract through the CLI, whatever its internals: a config key or type the collector does not accept
    is a usage error (exit 2); without NVML a good config gets as far as collecting (and fails there, exit 1)."""
    config = tmp_path / "config.json"
    config.write_text(rendered[variant]["config.json"])
    assert isinstance(json.loads(config.read_text()), dict)
    (tmp_path / "host").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "FAKE_NVML_SCENARIO")}
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--config", str(config), "--stdout", "--host-root", str(tmp_path / "host"),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert result.returncode != 2, result.stderr
    assert "unknown key" not in result.stderr
    assert "wrong type" not in result.stderr
