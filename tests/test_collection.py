"""The Ansible collection (scripts/build-collection.sh, docs/operations.md "As an Ansible collection"): the tarball
carries the role, its filters and the collector's wheel and nothing of the repository besides; installed with
ansible-galaxy into a collections path of its own, its role runs by its fully qualified name from a directory outside
the repository, with no roles_path, and installs the wheel it carries. The role's README is generated from its
argument specs, and its Galaxy metadata names what is tested. The real converge through the FQCN on a systemd guest
is Molecule's scenario `collection` (scripts/test.sh)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

ROLE = REPO / "roles" / "gpu_proc_collector"
FQCN = "gpu_proc_collector.gpu_proc_collector.gpu_proc_collector"
VERSION = re.search(r'^__version__ = "(.+)"$', (REPO / "collector" / "__init__.py").read_text(), re.M).group(1)  # type: ignore[union-attr]
WHEEL = f"roles/gpu_proc_collector/files/wheels/gpu_proc_collector-{VERSION}-py3-none-any.whl"
BIN = Path(sys.executable).parent  # ansible-galaxy and ansible-playbook of the interpreter running the tests


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHON=sys.executable, ANSIBLE_NOCOLOR="1", **extra)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (BIN / "ansible-galaxy").is_file(), f"no ansible-galaxy in {BIN} (scripts/test.sh installs it)"
    out = tmp_path_factory.mktemp("dist")
    result = _run([str(REPO / "scripts" / "build-collection.sh"), str(out)], REPO, _env())
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == out / f"gpu_proc_collector-gpu_proc_collector-{VERSION}.tar.gz"
    return path


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collections path the tarball is installed into, as a user installs it."""
    collections = tmp_path_factory.mktemp("collections")
    _run([str(BIN / "ansible-galaxy"), "collection", "install", "--collections-path", str(collections), str(tarball)],
         collections, _env())
    return collections


@pytest.mark.slow
def test_the_tarball_carries_the_role_its_filters_and_the_wheel_and_no_repository_files(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        wheel = tar.extractfile(WHEEL).read()  # type: ignore[union-attr]
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("gpu_proc_collector", "gpu_proc_collector", VERSION)
    for path in (ROLE / "tasks").iterdir():
        assert f"roles/gpu_proc_collector/tasks/{path.name}" in names
    assert {
        "roles/gpu_proc_collector/meta/argument_specs.yml", "roles/gpu_proc_collector/defaults/main.yml",
        "roles/gpu_proc_collector/files/constraints.txt", "roles/gpu_proc_collector/README.md",
        "plugins/filter/gpu_proc_collector.py", "meta/runtime.yml", "README.md", WHEEL,
    } <= names
    # Only the wheel of the collector: the repository's sources, tests and metadata stay out.
    assert not [n for n in names if n.split("/")[0] in {"tests", "collector", ".git", "scripts", "molecule", "bench",
                                                       "docs", "playbooks", "inventories", "build", "dist"}]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", "pyproject.toml", ".gitignore"))]
    assert [n for n in names if n.endswith(".whl")] == [WHEEL]
    # The wheel is the collector's, built from this checkout.
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        assert whl.read("collector/__init__.py") == (REPO / "collector" / "__init__.py").read_bytes()
        assert "gpu-proc-collector = collector.__main__:main" in whl.read(
            f"gpu_proc_collector-{VERSION}.dist-info/entry_points.txt").decode()


@pytest.mark.slow
def test_the_build_is_reproducible(tarball: Path, tmp_path: Path) -> None:
    again = Path(_run([str(REPO / "scripts" / "build-collection.sh"), str(tmp_path)], REPO, _env()).stdout.split()[-1])
    with tarfile.open(tarball) as a, tarfile.open(again) as b:
        first, second = a.extractfile(WHEEL).read(), b.extractfile(WHEEL).read()  # type: ignore[union-attr]
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()


PLAYBOOK = f"""\
- name: The collector, from the collection
  hosts: localhost
  connection: local
  gather_facts: true
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  roles:
    - role: {FQCN}
      vars:
        gpu_proc_collector_require_gpu: false
        gpu_proc_collector_textfile_dir: /tmp
  tasks:
    - name: The role's filters work in the collection (vars/main.yml calls them)
      ansible.builtin.assert:
        that:
          - _gpu_proc_collector_on_calendar == '*-*-* *:0/1:00'
          - _gpu_proc_collector_period | int == 60
          - _gpu_proc_collector_cpu_quota == '10%'
      tags: [gpu_proc_collector_install]
"""


@pytest.mark.slow
def test_the_installed_role_runs_by_its_fqcn_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    """A play in a directory outside the repository, with the installed collection as the only collections path and
    no roles_path: a syntax check, then check mode through the install tasks (configure and preflight's systemd
    assert need a systemd-booted host: Molecule's scenario `collection` converges for real). Check mode still
    builds a wheel when it needs one (install.yml: check_mode false), so a role without its wheel fails here, as
    the collection holds no pyproject.toml to build from."""
    assert REPO not in tmp_path.parents
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = _env(ANSIBLE_COLLECTIONS_PATH=str(installed), ANSIBLE_ROLES_PATH=str(tmp_path / "no-roles"),
               ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0")
    (tmp_path / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = false\n")
    playbook = [str(BIN / "ansible-playbook"), "-i", "localhost,", "play.yml"]
    _run([*playbook, "--syntax-check"], tmp_path, env)
    result = _run([*playbook, "--check", "--tags", "gpu_proc_collector_install"], tmp_path, env)
    out = result.stdout
    role_dir = installed / "ansible_collections" / "gpu_proc_collector" / "gpu_proc_collector" / "roles"
    assert f"TASK [{FQCN} : Choose the wheel to install]" in out
    build = out.split(f"TASK [{FQCN} : Build the wheel from the repository]")[1].split("TASK [")[0]
    assert "skipping: [localhost]" in build, build
    assert f"(item=gpu_proc_collector-{VERSION}-py3-none-any.whl)" in out
    assert (role_dir / "gpu_proc_collector" / WHEEL.split("gpu_proc_collector/", 1)[1]).is_file()
    assert "TASK [The role's filters work in the collection" in out
    assert "failed=0" in out


def test_the_role_readme_is_generated_from_the_argument_specs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "role-readme.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROLE / "README.md").read_text()
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    for name in specs:
        assert f"| `{name}` |" in readme
    for section in ("## Requirements", "## Role Variables", "## Dependencies", "## Example Playbook", "## License"):
        assert section in readme


def test_the_galaxy_metadata_names_what_is_tested() -> None:
    meta = yaml.safe_load((ROLE / "meta" / "main.yml").read_text())["galaxy_info"]
    scenario = yaml.safe_load((REPO / "molecule" / "default" / "molecule.yml").read_text())
    distributions = {"bullseye": "Debian", "bookworm": "Debian", "trixie": "Debian",
                     "jammy": "Ubuntu", "noble": "Ubuntu"}
    tested: dict[str, list[str]] = {}
    for release in sorted(platform["release"] for platform in scenario["platforms"]):
        tested.setdefault(distributions[release], []).append(release)
    assert tested == {"Debian": ["bookworm", "bullseye", "trixie"], "Ubuntu": ["jammy", "noble"]}  # README, Platforms
    assert meta["platforms"] == [{"name": name, "versions": versions} for name, versions in tested.items()]
    readme = (ROLE / "README.md").read_text()
    assert all(f"({release})" in readme for release in distributions)
    assert f'"ansible-core>={meta["min_ansible_version"]}"' in (REPO / "pyproject.toml").read_text()
    runtime = yaml.safe_load((REPO / "collection" / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == f">={meta['min_ansible_version']}.0"
    galaxy = (REPO / "collection" / "galaxy.yml.in").read_text()
    assert (meta["namespace"], meta["role_name"]) == ("gpu_proc_collector", "gpu_proc_collector")
    assert f"namespace: {meta['namespace']}" in galaxy

