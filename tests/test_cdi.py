"""The CDI side of DRA: the YAML reader against PyYAML, the spec files as CDI reads them (priority, conflicts, bad
files), the MIG capability files, and generated hostile specs."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector import miniyaml
from collector.cdi import CdiUnresolved, MigCap, SpecIndex, node_refs, parse_qualified, read_mig_caps, spec_dirs
from collector.model import CDI_UNRESOLVED_REASONS
from tests.cdisim import (
    DRA_KIND,
    ci_minor,
    claim_spec_path,
    gi_minor,
    go_yaml,
    gpu_device,
    mig_device,
    qualified,
    spec,
    write_mig_caps,
    write_spec,
)
from tests.simhost import HostTree

# ---- the YAML reader ----


class AgreedLoader(yaml.SafeLoader):
    """PyYAML reading plain scalars as null, bool, int or float only in the spellings YAML 1.1 and 1.2 agree on,
    which is what collector.miniyaml promises (PyYAML alone reads 1.1: `1:30` is 90, `yes` is true)."""


AgreedLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in [
    ("null", r"~|null|Null|NULL|", [*"~nN", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    ("int", r"[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+", list("-+0123456789")),
    ("float", r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
     list("-+0123456789.")),
]:
    AgreedLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), _first)

_chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x85\u2028\u2029\ufeff")
_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
            | st.text(_chars, max_size=30))
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_chars, max_size=20) | st.integers(-5, 5),
                                                                 inner, max_size=4),
    max_leaves=25)
_styles = st.fixed_dictionaries({
    "default_flow_style": st.sampled_from([False, None, True]), "indent": st.sampled_from([2, 3, 4, 8]),
    "width": st.sampled_from([10, 20, 80, 10**6]), "allow_unicode": st.booleans(), "explicit_start": st.booleans(),
    "explicit_end": st.booleans(), "default_style": st.sampled_from([None, None, None, '"', "'", "|", ">"]),
    "sort_keys": st.booleans()})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_documents, _styles)
def test_the_yaml_reader_reads_what_pyyaml_writes_as_pyyaml_reads_it(document: Any, style: dict[str, Any]) -> None:
    """Every style PyYAML writes (block, flow, mixed; quoted, literal and folded scalars; wrapped lines): the same
    value, or a refusal for the two constructs outside the subset that PyYAML writes: `? ` keys (for empty or long
    keys) and tags (`!!int "1"`, in the all-quoted styles)."""
    text = yaml.safe_dump(document, **style)
    try:
        mine = miniyaml.load(text)
    except miniyaml.YamlUnsupported as err:
        refused = str(err)
        assert "complex mapping key" in refused or ("tag" in refused and style["default_style"]), (text, refused)
        return
    assert mine == yaml.load(text, Loader=AgreedLoader), text  # noqa: S506 - a SafeLoader subclass


_TOKENS = st.sampled_from([
    "a", "b", "1", "x y", ":", ": ", "- ", "-", "#", " #c", "'", '"', "''", "\\", "\\n", "[", "]", "{", "}", ",",
    " ", "  ", "\n", "\n  ", "\n    ", "|", ">", "|-", ">+", "---", "...", "key: ", "- k: ", "?", "&a", "*a", "!t",
    "é", "\\x41", "0x1F", "~", "null", "true", ".inf", "1.5"])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_TOKENS, max_size=30).map("".join))
@example("[:a]").via("found by hypothesis: PyYAML starts no flow plain scalar with ':'")
@example("[?a]").via("nor with '?'")
def test_the_yaml_reader_never_accepts_what_pyyaml_rejects_nor_reads_it_otherwise(text: str) -> None:
    """Token soup: the reader refuses (YamlError, never another exception), or agrees with PyYAML."""
    try:
        mine = miniyaml.load(text)
    except miniyaml.YamlError:
        return
    try:
        expected = yaml.load(text, Loader=AgreedLoader)  # noqa: S506
    except yaml.YAMLError as err:
        pytest.fail(f"accepted {text!r} as {mine!r}; PyYAML: {err}")
    assert mine == expected, text


@pytest.mark.parametrize(("text", "reason"), [
    ("a: &x 1\nb: *x\n", miniyaml.YamlUnsupported),
    ("a: !!str 1\n", miniyaml.YamlUnsupported),
    ("? a\n: b\n", miniyaml.YamlUnsupported),
    ("%YAML 1.2\n---\na: 1\n", miniyaml.YamlUnsupported),
    ("a: 1\n---\nb: 2\n", miniyaml.YamlUnsupported),
    ("a: 1\na: 2\n", miniyaml.YamlMalformed),  # CDI's strict loader rejects duplicate keys too
    ("a: [1, 2\n", miniyaml.YamlMalformed),
    ("a: 'open\n", miniyaml.YamlMalformed),
    ("a:\n\t- b\n", miniyaml.YamlMalformed),
    ("a: b: c\n", miniyaml.YamlMalformed),
    ("a:\n  b: 1\n c: 2\n", miniyaml.YamlMalformed),
])
def test_what_the_yaml_reader_refuses_and_how(text: str, reason: type) -> None:
    with pytest.raises(reason):
        miniyaml.load(text)


def test_go_yaml_shaped_specs_and_hand_written_ones_read_as_pyyaml_reads_them() -> None:
    document = spec(DRA_KIND, [gpu_device("3f1c", 0), mig_device("3f1c", 1, 5, 0)])
    text = go_yaml(document)
    assert miniyaml.load(text) == yaml.safe_load(text) == document
    hand = ('cdiVersion: "0.6.0"\nkind: "nvidia.com/gpu"\ncontainerEdits:\n  mounts:\n    - hostPath: /x\n'
            "      options: [ro, nosuid, nodev, bind]  # a comment\n  hooks:\n    - args: [nvidia-cdi-hook,\n"
            "        update-ldcache, --folder, /usr/lib64]\ndevices:\n  - name: \"0\"\n    containerEdits:\n"
            "      deviceNodes:\n        - path: /dev/nvidia0\n")
    assert miniyaml.load(hand) == yaml.safe_load(hand)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(miniyaml.YamlMalformed):
        miniyaml.load("[" * 5000)
    with pytest.raises(miniyaml.YamlMalformed):
        miniyaml.load("".join(" " * n + "- \n" for n in range(0, 400, 2)) + " " * 400 + "- x\n")


# ---- spec files ----

@pytest.fixture
def tree(tmp_path: Path) -> HostTree:
    return HostTree(tmp_path / "root")


def test_a_dra_claim_spec_yields_each_devices_nodes_with_the_common_ones(tree: HostTree) -> None:
    gpu, mig = gpu_device("aa11", 3), mig_device("aa11", 1, 2, 0)
    write_spec(tree, claim_spec_path("aa11"), spec(DRA_KIND, [gpu, mig]))
    index = SpecIndex(str(tree.root))
    found = index.device(qualified(gpu))
    assert found.nodes == ("/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
    refs = node_refs(index.device(qualified(mig)).nodes)
    assert (refs.gpus, refs.caps) == ({1}, {gi_minor(1, 2), ci_minor(1, 2, 0)})


def test_host_paths_name_the_gpu_and_unrelated_nodes_are_not_gpus() -> None:
    refs = node_refs(["/run/nvidia/driver/dev/nvidia7", "/dev/nvidia-caps-imex-channels/channel3", "/dev/nvidiactl",
                      "/dev/nvidia-uvm", "/dev/dri/card1", "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia12x"])
    assert (refs.gpus, refs.caps) == ({7}, {12})


def test_var_run_cdi_wins_over_etc_cdi_and_a_same_directory_duplicate_is_a_conflict(tree: HostTree) -> None:
    static = spec("nvidia.com/gpu", [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
                                     {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1"}]}}])
    dynamic = spec("nvidia.com/gpu", [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia5"}]}}])
    write_spec(tree, "etc/cdi/nvidia.yaml", static)
    write_spec(tree, "var/run/cdi/nvidia.json", dynamic)
    write_spec(tree, "etc/cdi/other.yaml", spec("nvidia.com/gpu", [
        {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia6"}]}}]))
    index = SpecIndex(str(tree.root))
    assert node_refs(index.device("nvidia.com/gpu=0").nodes).gpus == {5}
    with pytest.raises(CdiUnresolved) as conflict:
        index.device("nvidia.com/gpu=1")
    assert conflict.value.reason == "conflict"


def test_var_run_as_a_link_is_read_at_run_under_the_host_root(tree: HostTree) -> None:
    (tree.root / "var").mkdir()
    (tree.root / "var/run").symlink_to("/run")  # absolute, as on Debian: it would leave the host root
    write_spec(tree, "run/cdi/x.json", spec("example.com/gpu", [
        {"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia2"}]}}]))
    assert spec_dirs(str(tree.root))[1] == str(tree.root / "run/cdi")
    assert node_refs(SpecIndex(str(tree.root)).device("example.com/gpu=a").nodes).gpus == {2}


@pytest.mark.parametrize(("content", "reason"), [
    ("---\ncdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n    - name: aa11-gpu-0\n      containerEd",
     "malformed"),
    ("cdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices: &d []\n", "yaml_unsupported"),
    ("cdiVersion: 0.5.0\nkind: nokind\ndevices:\n  - name: aa11-gpu-0\n", "malformed"),
    ("cdiVersion: 0.5.0\nkind: k8s.gpu.nvidia.com/claim\ndevices:\n  - name: aa11-gpu-0\n    containerEdits:\n"
     "      deviceNodes:\n        - hostPath: /dev/nvidia0\n", "malformed"),
    (b"\xff\xfe not utf-8", "malformed"),
])
def test_a_bad_spec_file_makes_its_devices_unresolved_with_its_reason(tree: HostTree, content: Any,
                                                                       reason: str) -> None:
    tree.write(claim_spec_path("aa11"), content)
    write_spec(tree, claim_spec_path("bb22"), spec(DRA_KIND, [gpu_device("bb22", 1)]))
    index = SpecIndex(str(tree.root))
    with pytest.raises(CdiUnresolved) as err:
        index.device(f"{DRA_KIND}=aa11-gpu-0")
    assert err.value.reason == reason
    assert node_refs(index.device(f"{DRA_KIND}=bb22-gpu-1").nodes).gpus == {1}  # the other claim is unaffected
    with pytest.raises(CdiUnresolved) as missing:
        index.device(f"{DRA_KIND}=cc33-gpu-0")  # no file named for it: not found, whatever else is broken
    assert missing.value.reason == "not_found"


def test_an_unreadable_spec_and_a_bad_name(tree: HostTree) -> None:
    link = tree.root / claim_spec_path("aa11", "json")
    link.parent.mkdir(parents=True)
    link.symlink_to(tree.root / "gone.json")  # listed, but no file to open, even for root
    index = SpecIndex(str(tree.root))
    with pytest.raises(CdiUnresolved) as err:
        index.device(f"{DRA_KIND}=aa11-gpu-0")
    assert err.value.reason == "unreadable"
    for bad in ("gpu0", "/dev/nvidia0", "k8s.gpu.nvidia.com=x", "nvidia.com/gpu=", "nvidia.com/gpu=-x"):
        with pytest.raises(CdiUnresolved) as err:
            index.device(bad)
        assert err.value.reason == "bad_name"
        assert parse_qualified(bad) is None


def test_mig_capability_files_map_minors_to_instances(tree: HostTree) -> None:
    write_mig_caps(tree, 1, [(2, 0), (9, 0)], listing=False)
    caps = read_mig_caps(str(tree.root))
    assert caps == {gi_minor(1, 2): MigCap(1, 2, None), ci_minor(1, 2, 0): MigCap(1, 2, 0),
                    gi_minor(1, 9): MigCap(1, 9, None), ci_minor(1, 9, 0): MigCap(1, 9, 0)}
    write_mig_caps(tree, 1, [], listing=True)  # the list alone names every possible instance, config and monitor
    caps = read_mig_caps(str(tree.root))
    assert caps[1] is None
    assert caps[2] is None
    assert caps[ci_minor(1, 14, 7)] == MigCap(1, 14, 7)
    assert read_mig_caps(str(tree.root / "nowhere")) == {}


# ---- hostile specs, generated ----

_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.sampled_from(["cdiVersion", "kind", "devices", "name", "path",
                                                               "hostPath", "containerEdits", "deviceNodes", "x"]),
                                              inner, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_json_values, st.booleans(), st.binary(max_size=40))
def test_any_spec_file_gives_a_device_or_a_reason_never_an_exception(document: Any, as_yaml: bool,
                                                                     noise: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        tree = HostTree(Path(root))
        path = claim_spec_path("aa11", "yaml" if as_yaml else "json")
        text = (yaml.safe_dump(document) if as_yaml else json.dumps(document)).encode()
        tree.write(path, text if not noise else text[: len(text) // 2] + noise)
        reason = ""
        try:
            found = SpecIndex(root).device(f"{DRA_KIND}=aa11-gpu-0")
        except CdiUnresolved as err:
            reason = err.reason
        assert reason in CDI_UNRESOLVED_REASONS if reason else all(isinstance(n, str) and n for n in found.nodes)
