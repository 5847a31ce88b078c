"""The command line and the configuration file: device lists, and values of the wrong kind or range refused as
usage errors (exit 2) before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli import UsageError, parse_devices, settings


def test_parse_devices() -> None:
    assert parse_devices("0, 2,3") == {0, 2, 3}
    assert parse_devices("") == frozenset()
    for bad in ("a", "-1", "1;2"):
        with pytest.raises(UsageError):
            parse_devices(bad)


@pytest.mark.parametrize(("argv", "message"), [
    (["--pod-resources-timeout", "0"], "--pod-resources-timeout must be a positive"),
    (["--deadline", "-1"], "--deadline must be a positive"),
    (["--interval", "0"], "--interval must be a positive"),
    (["--max-process-series", "-5"], "--max-process-series must be 0 or more"),
    (["--label-prefix", "9x"], "--label-prefix must be"),
])
def test_bad_option_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings(argv)


def test_config_values_of_the_wrong_type_are_usage_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    for document in ('{"resource_names": [1]}', '{"command_args": "yes"}', '{"devices": [true]}',
                     '{"pod_resources_timeout": 0}', '{"interval": true}'):
        config.write_text(document)
        with pytest.raises(UsageError):
            settings(["--config", str(config)])
