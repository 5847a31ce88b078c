"""The text-format writer against prometheus_client, the reference implementation: the same families must come out
byte for byte as its generate_latest writes them, whatever the names, help texts, label values and numbers."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.utils import floatToGoString

from collector.exposition import COUNTER, GAUGE, Family, format_value, render
from tests.conftest import samples
from tests.support.promref import registry_of

_name = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
_label_name = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(lambda n: not n.startswith("__"))
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ['\\', '"', "\n", '\\n', '\\"', "a\\\\b", "ünïcødé", "\u2028", "}", "{", ",", "=", "# HELP x y"])
_value = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**63), 2**64).map(float) | st.sampled_from(
    [0.0, -0.0, 1e6, 1e7, 1234567.0, 12345678.9, 1e21, 1e22, 5e-324, 0.1, 85899345920.0])


@st.composite
def _families(draw: st.DrawFn) -> list[Family]:
    out = []
    for name in draw(st.lists(_name, min_size=1, max_size=4, unique=True)):
        kind = draw(st.sampled_from([GAUGE, COUNTER]))
        labels = draw(st.lists(_label_name, max_size=5, unique=True))
        family = Family(name + ("_total" if kind == COUNTER else ""), draw(_text), labels, kind)
        for _ in range(draw(st.integers(0, 4))):
            family.add([draw(_text) for _ in labels], draw(_value))
        out.append(family)
    return out


def _reference(families: list[Family]) -> bytes:
    return generate_latest(registry_of(families))


@settings(max_examples=400, deadline=None)
@given(_families())
def test_any_families_render_as_prometheus_client_renders_them(families: list[Family]) -> None:
    assert render(families) == _reference(families)


@settings(max_examples=200, deadline=None)
@given(_families(), st.data())
def test_series_rendered_once_write_the_same_lines_as_label_values(families: list[Family], data: st.DataObject
                                                                   ) -> None:
    """The long-running mode renders a series once (Family.series) and adds it again at each write (add_series),
    by itself or among samples given as label values, after other values or the same, rounded or not: the file is
    the same byte for byte."""
    expected, again = [], []
    for family in families:
        fresh, copy = (Family(family.name, family.help, family.labels, family.type) for _ in range(2))
        for values, value in family.samples:
            digits = data.draw(st.none() | st.integers(0, 6))
            fresh.add(values, value, digits)
            if data.draw(st.booleans()):
                series = Family(family.name, "another help", family.labels).series(values)
                for earlier in data.draw(st.lists(_value, max_size=2)):  # its last line is of another value
                    Family(family.name, "another help", family.labels).add_series(series, earlier, digits)
                copy.add_series(series, value, digits)
            else:
                copy.add(values, value, digits)
        expected.append(fresh)
        again.append(copy)
    assert render(again) == render(expected)


@given(_value)
def test_values_are_written_as_go_writes_floats(value: float) -> None:
    assert format_value(value) == floatToGoString(value)


def test_hostile_label_values_parse_back_unchanged() -> None:
    hostile = ['a"b', "back\\slash", "new\nline", '\\"', "}", "", "ü\u2028"]
    family = Family("gpu_test_info", "help with \\ and \n newline", ["command", "pod"])
    for n, value in enumerate(hostile):
        family.add([value, str(n)], 1.0)
    parsed = samples(render([family]).decode())
    assert sorted(lab["command"] for lab, _ in parsed["gpu_test_info"]) == sorted(hostile)


def test_special_values() -> None:
    family = Family("x", "h")
    for value in (math.inf, -math.inf, math.nan):
        family.add((), value)
    assert render([family]).decode().splitlines()[2:] == ["x +Inf", "x -Inf", "x NaN"]
