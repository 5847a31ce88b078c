"""The operator's reference pages against the code: every command-line option, config key and metric family the
collector has is named in docs/, so none ships undocumented."""

from __future__ import annotations

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
