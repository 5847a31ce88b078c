"""The CDI side of DRA: the strict YAML loader against yaml.safe_load, the spec files as CDI reads them (priority,
conflicts, bad files), the MIG capability files, and generated hostile specs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import strictyaml
from collector.attribution.cdi import (
    CdiUnresolved,
    MigCap,
    SpecIndex,
    node_refs,
    parse_qualified,
    read_mig_caps,
    spec_dirs,
)
from collector.model import CDI_UNRESOLVED_REASONS
from tests.support.cdisim import (
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
from tests.support.simhost import HostTree

# ---- the YAML loader ----

_chars = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x85\u2028\u2029\ufeff")
_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
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


# What the strict loader parses with (libyaml: scripts/setup.sh installs PyYAML's wheel, built with it), to compare
# like with like: libyaml and PyYAML's Python parser differ at the edges (libyaml reads `|#` as '').
SAFE_LOADER = yaml.CSafeLoader


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader


def _load(text: str) -> tuple[Any, Optional[strictyaml.YamlRefused]]:
    try:
        return strictyaml.load(text), None
    except strictyaml.YamlRefused as err:
        return None, err


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_documents, _styles)
def test_the_strict_loader_reads_what_pyyaml_writes_as_safe_load_does(document: Any, style: dict[str, Any]) -> None:
    """Every style PyYAML writes (block, flow, mixed; quoted, literal and folded scalars; wrapped lines): the same
    value as yaml.safe_load, or a refusal for the one construct outside what CDI writes that PyYAML writes: tags
    (`!!int "1"`, in the all-quoted styles)."""
    text = yaml.safe_dump(document, **style)
    mine, refused = _load(text)
    if refused is not None:
        assert "tag" in str(refused), (text, str(refused))
        assert style["default_style"], (text, str(refused))
    else:
        assert mine == _safe_load(text), text


_TOKENS = st.sampled_from([
    "a", "b", "1", "x y", ":", ": ", "- ", "-", "#", " #c", "'", '"', "''", "\\", "\\n", "[", "]", "{", "}", ",",
    " ", "  ", "\n", "\n  ", "\n    ", "|", ">", "|-", ">+", "---", "...", "key: ", "- k: ", "?", "&a", "*a", "!t",
    "é", "\\x41", "0x1F", "~", "null", "true", ".inf", "1.5", "<<: ", "9" * 50])


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_TOKENS, max_size=30).map("".join))
def test_the_strict_loader_refuses_with_a_reason_or_agrees_with_safe_load(text: str) -> None:
    """Token soup: the loader refuses (YamlRefused with a CDI reason, never another exception), or reads what
    yaml.safe_load reads."""
    mine, refused = _load(text)
    if refused is not None:
        assert refused.reason in CDI_UNRESOLVED_REASONS
    else:
        assert mine == _safe_load(text), text


@pytest.mark.parametrize(("text", "reason"), [
    ("a: &x 1\nb: *x\n", "yaml_unsupported"),  # anchors and aliases: a billion laughs is a few of them
    ("a: &x 1\n", "yaml_unsupported"),
    ("a: *x\n", "yaml_unsupported"),
    ("a: !!str 1\n", "yaml_unsupported"),
    ("a: !!python/object:os.system 1\n", "yaml_unsupported"),
    ("? [a]\n: b\n", "yaml_unsupported"),
    ("<<: {a: 1}\nb: 2\n", "yaml_unsupported"),  # a merge key
    ("%YAML 1.1\n---\na: 1\n", "yaml_unsupported"),
    ("a: 1\n---\nb: 2\n", "yaml_unsupported"),
    ("a: 1\na: 2\n", "malformed"),  # CDI's strict loader rejects duplicate keys too
    ("a: " + "1" * 5000 + "\n", "malformed"),  # int() raises past 4,300 digits
    ("a: " + "1" * 50 + "\n", "malformed"),  # int() reads it; no CDI field is a number this long
    ("a: .inf\n", "malformed"),
    ("a: [1, 2\n", "malformed"),
    ("a: 'open\n", "malformed"),
    ("a:\n\t- b\n", "malformed"),
    ("a: b: c\n", "malformed"),
    ("a:\n  b: 1\n c: 2\n", "malformed"),
])
def test_what_the_strict_loader_refuses_and_why(text: str, reason: str) -> None:
    with pytest.raises(strictyaml.YamlRefused) as refused:
        strictyaml.load(text)
    assert refused.value.reason == reason, str(refused.value)


def test_go_yaml_shaped_specs_and_hand_written_ones_read_as_safe_load_reads_them() -> None:
    document = spec(DRA_KIND, [gpu_device("3f1c", 0), mig_device("3f1c", 1, 5, 0)])
    text = go_yaml(document)
    assert strictyaml.load(text) == yaml.safe_load(text) == document
    hand = ('cdiVersion: "0.6.0"\nkind: "nvidia.com/gpu"\ncontainerEdits:\n  mounts:\n    - hostPath: /x\n'
            "      options: [ro, nosuid, nodev, bind]  # a comment\n  hooks:\n    - args: [nvidia-cdi-hook,\n"
            "        update-ldcache, --folder, /usr/lib64]\ndevices:\n  - name: \"0\"\n    containerEdits:\n"
            "      deviceNodes:\n        - path: /dev/nvidia0\n")
    assert strictyaml.load(hand) == yaml.safe_load(hand)


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    "".join(" " * n + "- \n" for n in range(0, 400, 2)) + " " * 400 + "- x\n",
    "a:\n" + "".join(" " * n + "b:\n" for n in range(2, 400, 2)),
], ids=["flow", "block sequence", "block mapping"])
@pytest.mark.parametrize("loader", ["libyaml", "python"])
def test_deep_nesting_is_refused_not_a_crash(text: str, loader: str) -> None:
    """Both of PyYAML's parsers: the C one (whose own composer recurses without a depth check) and the Python one
    (whose composer raises RecursionError past about 1,000 levels)."""
    assert strictyaml.LIBYAML, "PyYAML without libyaml: scripts/setup.sh installs the wheel, which has it"
    loader_class = strictyaml.StrictLoader if loader == "libyaml" else strictyaml.PythonStrictLoader
    with pytest.raises(strictyaml.YamlRefused) as refused:
        strictyaml.load(text, loader_class)
    assert refused.value.reason == "malformed"


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
