"""The operator's reference pages against the code: every command-line option, config key and metric family the
collector has is named in docs/, so none ships undocumented."""

from __future__ import annotations

import importlib.util
import re

import yaml

from collector.cli import build_parser
from collector.metrics import _ReportFamilies, _self_families
from collector.settings import CONFIG_TYPES
from tests.conftest import REPO


def test_the_operations_page_names_every_flag_and_config_key() -> None:
    page = (REPO / "docs" / "operations.md").read_text()
    flags = {flag for action in build_parser()._actions for flag in action.option_strings if flag.startswith("--")}
    assert len(flags) > 15  # the parser's options were read
    assert sorted(flag for flag in flags - {"--help"} if f"`{flag}" not in page) == []
    assert sorted(key for key in CONFIG_TYPES if f"`{key}`" not in page) == []


def test_the_metrics_page_names_every_family_and_label() -> None:
    """Every family a run can write (they are all declared up front, and the collector's own), with each label."""
    page = (REPO / "docs" / "metrics.md").read_text()
    families = [*_ReportFamilies("", command_args=True).declared, *_self_families(True, 0.0, 0.0, "")]
    assert len(families) > 40  # the declarations were read
    assert sorted(f.name for f in families if f"`{f.name}`" not in page and f"`{f.name}{{" not in page) == []
    assert sorted({label for f in families for label in f.labels if label not in page}) == []


def test_the_compatible_families_are_on_the_compatibility_page() -> None:
    page = (REPO / "docs" / "compatibility.md").read_text()
    for name in ("gpu_process_count", "gpu_total_processes", "gpu_process_info", "gpu_process_utilization",
                 "gpu_process_memory_utilization"):
        assert f"| `{name}` |" in page


def test_the_readmes_variables_carry_the_defaults_of_the_argument_specs() -> None:
    """The README's short table of the variables most often set: each named variable exists, with its default as
    the generated tables write it (scripts/role-readme.py)."""
    spec = importlib.util.spec_from_file_location("role_readme", REPO / "scripts" / "role-readme.py")
    assert spec is not None
    assert spec.loader is not None
    role_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(role_readme)
    specs = yaml.safe_load((REPO / "roles" / "gpu_proc_collector" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    section = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`gpu_proc_collector_[^|]+) \| ([^|]+) \|", section, re.M)
    assert len(rows) >= 6
    for names, defaults in rows:
        variables = re.findall(r"`(gpu_proc_collector_\w+)`", names)
        assert variables
        assert all(name in options for name in variables), names
        assert [role_readme._default(options[name]) for name in variables] == defaults.split(", "), names
