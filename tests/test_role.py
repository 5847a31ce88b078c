"""The role's static contract: defaults and argument specs agree, the compatible settings
(docs/compatibility.md) translate for systemd."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require_tool
from tests.support.role_render import VARIANTS, ansible_playbook, render

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


def test_the_mode_variables_and_their_defaults() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert defaults["gpu_proc_collector_mode"] == "timer"
    assert specs["gpu_proc_collector_mode"]["choices"] == ["timer", "service"]
    assert (defaults["gpu_proc_collector_interval"], defaults["gpu_proc_collector_sample_interval"]) == (60, 5)
    assert specs["gpu_proc_collector_interval"]["type"] == specs["gpu_proc_collector_sample_interval"]["type"] == "int"


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
    analyze = require_tool("systemd-analyze")
    for cron in ("*/1 * * * *", "30 2 * * 1-5", "15,45 9-17 * * *", "0 0 1 */3 *", "0 12 * jan,jul sun"):
        expr = filters.cron_to_oncalendar(cron)
        result = subprocess.run([analyze, "calendar", expr], capture_output=True, text=True, check=False)
        assert result.returncode == 0, (cron, expr, result.stderr)


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("*/1 * * * *", 60),
    ("*/5 * * * *", 300),
    ("*/7 * * * *", 420),  # :56 to :00 is shorter; the longest gap is what accounting must not count as one
    ("0,30 * * * *", 1800),
    ("0 * * * *", 3600),
    ("@hourly", 3600),
    ("0 */6 * * *", 6 * 3600),
    ("15,45 9-17 * * *", 55800),  # 17:45 to 9:15 next day
    ("30 2 * * *", 86400),
    ("30 2 * * 1-5", 3 * 86400),  # Friday to Monday
    ("0 0 * * 0", 7 * 86400),
    ("*:0/5", 300),
    ("*-*-* *:0/10:00", 600),
    ("*:*:0/20", 20),
    ("*-*-* 08..20/4:00", 12 * 3600),  # 20:00 to 08:00
    ("Mon..Fri *-*-* 02:30", 3 * 86400),
    ("Sat,Sun 3:00", 6 * 86400),
    ("minutely", 60),
    ("hourly", 3600),
    ("daily", 86400),
    ("weekly", 7 * 86400),
    ("monthly", 31 * 86400),
])
def test_schedule_periods(schedule: str, seconds: int) -> None:
    assert filters.schedule_period(schedule) == seconds


@pytest.mark.parametrize("schedule", ["0 0 1 * *", "0 0 1 */3 *", "*-*-1 00:00", "*-*-* 00:00:00 UTC",
                                      "*-*-* 00:00:00.5", "Mon *-*-1 0:0", "2030-01-01 00:00", "not a schedule",
                                      "*:61"])
def test_schedules_it_cannot_reason_about_get_the_default(schedule: str) -> None:
    assert filters.schedule_period(schedule) == 60
    assert filters.schedule_period(schedule, 90) == 90


def _systemd_elapses(expression: str, count: int) -> list[datetime]:
    result = subprocess.run(["systemd-analyze", "calendar", f"--iterations={count}", expression],
                            capture_output=True, text=True, env={**os.environ, "TZ": "UTC"}, check=True)
    return [datetime.strptime(found, "%Y-%m-%d %H:%M:%S")
            for found in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", result.stdout)]


# Steps that divide their range: systemd 252 (Debian 12) computes `*:0/7` as 23:56 -> 00:07 the next day (it adds
# the repetition and normalises the overflow, the kind of skip of systemd/systemd#22665 and #40260), so there the
# longest gap differs from the schedule's.
@pytest.mark.parametrize("schedule", ["*/1 * * * *", "*/10 * * * *", "0,20 */3 * * *", "15,45 9-17 * * *",
                                      "30 2 * * 1-5", "0 12 * * sun", "*:*:0/20", "*-*-* 08..20/4:00",
                                      "Mon..Fri *-*-* 02:30", "Sat,Sun 3:00", "weekly"])
def test_schedule_periods_agree_with_systemd(schedule: str) -> None:
    """The longest gap between the next 600 elapses systemd itself computes for the translated expression: every
    schedule here repeats (by the minute, hour, day or week) several times within them."""
    elapses = _systemd_elapses(filters.cron_to_oncalendar(schedule), 600)
    assert len(elapses) == 600
    longest = max((b - a).total_seconds() for a, b in zip(elapses, elapses[1:]))
    assert (elapses[-1] - elapses[0]).total_seconds() >= 3 * longest
    assert filters.schedule_period(schedule) == longest


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
    for path in [*ROLE.rglob("*.yml"), *Path(REPO, "molecule").rglob("*.yml"), REPO / "playbooks" / "site.yml",
                 REPO / "site.yml"]:
        yaml.safe_load(path.read_text())


def test_the_operators_pages_list_every_role_variable() -> None:
    """docs/operations.md has every variable in its table, and the README links it and the role's README (both
    tables generated by scripts/role-readme.py, which tests/test_collection.py holds to the argument specs)."""
    operations = (REPO / "docs" / "operations.md").read_text()
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    missing = [name for name in specs if f"| `{name}` |" not in operations]
    assert missing == []
    readme = (REPO / "README.md").read_text()
    assert "(docs/operations.md)" in readme
    assert "(roles/gpu_proc_collector/README.md)" in readme


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return render(tmp_path_factory.mktemp("role"))


@pytest.mark.slow
def test_the_units_carry_the_translated_schedule_and_limits(rendered: dict[str, dict[str, str]]) -> None:
    for variant, calendar, quota, memory in (("default", "*-*-* *:0/1:00", "10%", "128M"),
                                             ("full", "*-*-* *:0/5:00", "25%", "128M")):
        service = rendered[variant]["gpu-proc-collector.service"].splitlines()
        assert f"CPUQuota={quota}" in service, variant
        assert f"MemoryMax={memory}" in service, variant
        assert f"OnCalendar={calendar}" in rendered[variant]["gpu-proc-collector.timer"].splitlines(), variant


@pytest.mark.slow
def test_the_unit_names_private_ipc_only_to_a_systemd_that_knows_it(rendered: dict[str, dict[str, str]]) -> None:
    """PrivateIPC= is systemd 248's: Debian 11's 247 logs "Unknown key name" at every load (seen in the Molecule
    guest) and runs without it, so the role leaves it out there (preflight.yml reads the version)."""
    assert "PrivateIPC=yes" in rendered["default"]["gpu-proc-collector.service"].splitlines()
    old = rendered["systemd247"]["gpu-proc-collector.service"]
    assert "PrivateIPC" not in old
    assert old == rendered["default"]["gpu-proc-collector.service"].replace("PrivateIPC=yes\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_config_template_writes_only_what_the_collector_accepts(
        rendered: dict[str, dict[str, str]], variant: str, tmp_path: Path) -> None:
    """The contract through the CLI, whatever its internals: a config key or type the collector does not accept
    is a usage error (exit 2); without NVML a good config gets as far as collecting (and fails there: a timer
    mode run exits 1, a service mode process writes its up-0 file and keeps running until SIGTERM, then exits 0)."""
    config = tmp_path / "config.json"
    config.write_text(rendered[variant]["config.json"])
    assert isinstance(json.loads(config.read_text()), dict)
    (tmp_path / "host").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "FAKE_NVML_SCENARIO")}
    command = [sys.executable, "-m", "collector", "--config", str(config), "--stdout", "--host-root",
               str(tmp_path / "host"), "--state-dir", str(tmp_path / "state")]
    service = VARIANTS[variant].get("gpu_proc_collector_mode") == "service"
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=REPO) as process:
        assert process.stdout is not None
        if service:
            first = process.stdout.readline()  # the first line of the first file ("" if it exited without one)
            assert first.startswith("# HELP"), process.communicate(timeout=60)
            assert process.poll() is None, "service mode's config must keep the collector running"
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode != 2, stderr
    assert "unknown key" not in stderr
    assert "wrong type" not in stderr
    if service:
        assert process.returncode == 0, stderr
    else:
        assert "gpu_proc_collector_up 0" in stdout


# The [Service] lines that differ between the modes; everything else (resource limits and the sandbox) must be
# the same lines, in the same order, in both.
MODE_KEYS = {"Type", "ExecStart", "ExecReload", "NotifyAccess", "TimeoutStartSec", "TimeoutStopSec", "WatchdogSec",
             "Restart", "RestartSec", "RestartPreventExitStatus"}


def sections(unit: str) -> dict[str, list[tuple[str, str]]]:
    """{"[Section]": [(key, value)]} of a unit file, comments and blank lines left out."""
    found: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line
            found.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        found[current].append((key, value))
    return found


def hardening(unit: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in sections(unit)["[Service]"] if k not in MODE_KEYS]


@pytest.mark.slow
@pytest.mark.parametrize(("timer", "service"), [("default", "service"), ("full_timer", "full")])
def test_both_modes_share_the_same_hardening(rendered: dict[str, dict[str, str]], timer: str, service: str) -> None:
    oneshot = rendered[timer]["gpu-proc-collector.service"]
    notify = rendered[service]["gpu-proc-collector.service"]
    assert dict(sections(oneshot)["[Service]"])["Type"] == "oneshot"
    assert dict(sections(notify)["[Service]"])["Type"] == "notify"
    assert len(hardening(oneshot)) >= 30
    assert hardening(oneshot) == hardening(notify)


@pytest.mark.slow
def test_the_hardening_comparison_sees_a_directive_of_one_mode_only(rendered: dict[str, dict[str, str]]) -> None:
    """The guard of the test above: a sandbox line that only one mode's unit has is a difference."""
    notify = rendered["service"]["gpu-proc-collector.service"]
    weaker = notify.replace("ProtectClock=yes\n", "")
    assert weaker != notify
    assert hardening(rendered["default"]["gpu-proc-collector.service"]) != hardening(weaker)


def seconds(value: str) -> float:
    """A systemd time span of the simple kinds the role writes: "68", "68s", "1min 8s"."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["service", "full"])
def test_the_service_mode_unit(rendered: dict[str, dict[str, str]], variant: str) -> None:
    values = VARIANTS[variant]
    unit = sections(rendered[variant]["gpu-proc-collector.service"])
    service = dict(unit["[Service]"])
    config = json.loads(rendered[variant]["config.json"])
    sample = values.get("gpu_proc_collector_sample_interval", 5)
    timeout = values.get("gpu_proc_collector_timeout_sec", 50)
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert 1 <= seconds(service["RestartSec"]) <= 60
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert seconds(service["TimeoutStopSec"]) <= 15  # the collector stops within about a second
    assert seconds(service["TimeoutStartSec"]) == timeout > config["deadline"]
    assert config["deadline"] == timeout * 0.8
    # The longest silence between two WATCHDOG=1 is the last wait before a write plus that collection; pings come
    # at least every half of the timeout (sd_watchdog_enabled(3)'s advice).
    assert seconds(service["WatchdogSec"]) >= 2 * (sample + config["deadline"])
    assert seconds(service["WatchdogSec"]) > max(sample, config["deadline"])
    assert unit["[Install]"] == [("WantedBy", "multi-user.target")]
    assert (config["interval"], config["sample_interval"]) == (values.get("gpu_proc_collector_interval", 60), sample)
    assert "nominal_interval" not in config


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "period"), [("default", 60), ("full_timer", 300)])
def test_the_timer_mode_unit_and_config(rendered: dict[str, dict[str, str]], variant: str, period: int) -> None:
    unit = sections(rendered[variant]["gpu-proc-collector.service"])
    service = dict(unit["[Service]"])
    config = json.loads(rendered[variant]["config.json"])
    assert service["Type"] == "oneshot"
    assert not {"WatchdogSec", "Restart", "ExecReload", "NotifyAccess"} & set(service)
    assert "[Install]" not in unit  # started by the timer only
    assert config["nominal_interval"] == period
    # "interval" would make the oneshot run forever.
    assert "interval" not in config
    assert "sample_interval" not in config


def _rollout(tmp_path: Path, failing: str, extra: list[str]) -> str:
    """playbooks/site.yml's own play keywords (serial, max_fail_percentage) over five local hosts, with its role
    swapped for one task that fails on `failing`: the hosts the recap lists are the ones the rollout reached."""
    play = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())[0]
    play.pop("roles")
    play.update(
        become=False,
        gather_facts=False,
        tasks=[{"name": "bad", "ansible.builtin.fail": {"msg": "bad"}, "when": f"inventory_hostname == '{failing}'"}],
    )
    (tmp_path / "site.yml").write_text(yaml.safe_dump([play]))
    hosts = {f"h{i}": {"ansible_connection": "local"} for i in range(1, 6)}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": hosts}}}}))
    result = subprocess.run(
        [ansible_playbook(), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "site.yml"), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_site_rollout_stops_at_the_first_failing_batch(tmp_path: Path) -> None:
    # Default batches: one canary, then 10 % (one host of five): h2 fails, so h3-h5 are never reached.
    recap = _rollout(tmp_path, "h2", []).split("PLAY RECAP")[-1]
    assert re.findall(r"^(h\d)\s+:", recap, re.M) == ["h1", "h2"]


@pytest.mark.slow
def test_site_rollout_batches_come_from_extra_vars(tmp_path: Path) -> None:
    # The example extra-vars file: two canaries, then 25 %; a failure in a batch of two stops the play.
    recap = _rollout(tmp_path, "h1", ["-e", f"@{REPO / 'inventories' / 'example-rollout.yml'}"]).split("PLAY RECAP")[-1]
    assert re.findall(r"^(h\d)\s+:", recap, re.M) == ["h1", "h2"]


@pytest.mark.slow
def test_the_quick_start_command_plays_the_rollout_on_the_example_inventory() -> None:
    """`ansible-playbook site.yml` from the repository root, as the README's quick start says: the root site.yml
    is playbooks/site.yml's play, and ansible.cfg's inventory is the example fleet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")} | {"ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run([ansible_playbook(), "site.yml", "--list-hosts"], cwd=REPO, capture_output=True,
                            text=True, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    play = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())[0]
    assert f"play #1 ({play['hosts']}): {play['name']}" in result.stdout
    fleet = yaml.safe_load((REPO / "inventories" / "example" / "hosts.yml").read_text())
    listed = re.findall(r"^\s+(\S+\.example\.internal)$", result.stdout, re.M)
    assert sorted(listed) == sorted(fleet["all"]["children"]["gpu_nodes"]["hosts"])
    assert "ansible-playbook site.yml" in (REPO / "README.md").read_text()
