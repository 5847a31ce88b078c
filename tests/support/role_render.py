"""The role's templates as Ansible renders them: the real `template` action, the role's defaults and vars, its
filter plugins and `ansible_managed`, run by ansible-playbook on localhost (no host is touched but a temp dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

ROLE = REPO / "roles" / "gpu_proc_collector"
TEMPLATES = ("gpu-proc-collector.service", "gpu-proc-collector.timer", "config.json")
# What preflight.yml finds on a host (node_exporter's textfile directory); the templates need it.
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"

# Every optional variable set to something other than its default (so the mode is service).
ALL_OPTIONAL: dict[str, Any] = {
    "gpu_proc_collector_mode": "service",
    "gpu_proc_collector_interval": 30,
    "gpu_proc_collector_sample_interval": 3,
    "gpu_proc_collector_schedule": "*/5 * * * *",
    "gpu_proc_collector_cpu_limit": "250m",
    "gpu_proc_collector_memory_limit": "128Mi",
    "gpu_proc_collector_devices": [0, 2],
    "gpu_proc_collector_gpu_count": 4,
    "gpu_proc_collector_textfile_dir": "/srv/textfiles",
    "gpu_proc_collector_state_dir": "/var/lib/gpc-state",
    "gpu_proc_collector_install_dir": "/opt/gpc",
    "gpu_proc_collector_config_dir": "/etc/gpc",
    "gpu_proc_collector_host_root": "/host",
    "gpu_proc_collector_pod_resources_socket": "/run/kubelet/pod-resources.sock",
    "gpu_proc_collector_pod_resources_timeout": 3,
    "gpu_proc_collector_resource_names": ["example.com/gpu"],
    "gpu_proc_collector_label_prefix": "k8s_",
    "gpu_proc_collector_log_level": "debug",
    "gpu_proc_collector_command_args": True,
    "gpu_proc_collector_max_process_series": 500,
    "gpu_proc_collector_timeout_sec": 30,
    "gpu_proc_collector_rootless_users": ["alice", "svc-infer"],
    # What preflight.yml reads from the host's user database for them (getent passwd).
    "_gpu_proc_collector_rootless_homes": {"alice": ["x", "1000", "1000", "", "/home/alice", "/bin/bash"],
                                           "svc-infer": ["x", "990", "990", "", "/srv/infer", "/usr/sbin/nologin"]},
}


def ansible_playbook() -> str:
    """The ansible-playbook of the project's virtualenv, beside this Python (scripts/test.sh installs it with the
    role extra). Missing, the test fails with the reason: never a skip, and never another ansible-playbook on PATH,
    which would render with an Ansible the project does not pin."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if not beside.exists():
        pytest.fail(f"ansible-playbook is not installed beside {sys.executable} (scripts/test.sh installs it: "
                    "pip install -e '.[role]')")
    return str(beside)


# The variants rendered: the defaults (timer mode), service mode with the defaults otherwise, ALL_OPTIONAL, and
# ALL_OPTIONAL in timer mode, all for a host with Debian 12's systemd; and the defaults for Debian 11's.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "service": {"gpu_proc_collector_mode": "service"},
    "full": ALL_OPTIONAL,
    "full_timer": {**ALL_OPTIONAL, "gpu_proc_collector_mode": "timer"},
    "systemd247": {"_gpu_proc_collector_systemd_version": 247},
}
# What preflight.yml reads from `systemctl --version` unless a variant says otherwise.
SYSTEMD_VERSION = 252


def render(out: Path) -> dict[str, dict[str, str]]:
    """Renders every template with each of VARIANTS' values: {variant: {name: text}}."""
    out.mkdir(parents=True, exist_ok=True)
    plays = []
    for variant, values in VARIANTS.items():
        (out / f"{variant}.json").write_text(json.dumps(values))
        extra = [str(out / f"{variant}.json")]
        (out / variant).mkdir(exist_ok=True)
        plays.append({
            "name": f"Render the role's templates ({variant})",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), *extra, str(ROLE / "vars" / "main.yml")],
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "role_path": str(ROLE),
                "_gpu_proc_collector_textfile_dir": f"{{{{ gpu_proc_collector_textfile_dir or '{TEXTFILE_DIR}' }}}}",
                "_gpu_proc_collector_systemd_version": SYSTEMD_VERSION,
            },
            "tasks": [{
                "name": "Render",
                "ansible.builtin.template": {"src": str(ROLE / "templates") + "/{{ item }}.j2",
                                             "dest": str(out / variant) + "/{{ item }}", "mode": "0644"},
                "loop": list(TEMPLATES),
            }],
        })
    playbook = out / "render.yml"
    playbook.write_text(json.dumps(plays))  # JSON is YAML
    env = {**os.environ, "ANSIBLE_FILTER_PLUGINS": str(ROLE / "filter_plugins"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "ANSIBLE_RETRY_FILES_ENABLED": "false"}
    result = subprocess.run([ansible_playbook(), "-i", "localhost,", str(playbook)], capture_output=True,
                            text=True, env=env, cwd=out, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {variant: {name: (out / variant / name).read_text() for name in TEMPLATES} for variant in VARIANTS}
