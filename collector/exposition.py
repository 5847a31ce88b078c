"""The Prometheus text exposition format (0.0.4), written here instead of by prometheus_client.

Why not the library: importing prometheus_client pulls in an HTTP server, TLS and e-mail parsing (about 40 ms of a
run that never serves HTTP), and its `generate_latest` re-validates every label name of every sample, a third of
a run at 1,000 processes. The format itself is small and fixed (docs/exposition.md): a HELP and a TYPE line per
family, one line per sample, label pairs sorted by name, label values with backslash, double quote and newline
escaped, HELP text with backslash and newline escaped, values as Go formats floats. The output is byte for byte
what prometheus_client's `generate_latest` writes for the same families; the tests hold it to that (hypothesis,
hostile names included), and promtool checks every file the tests write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from math import copysign
from operator import itemgetter
from typing import Any, Optional

GAUGE = "gauge"
COUNTER = "counter"


class Family:
    """One metric family: a name, its help, its type, its label names, and the samples added to it."""

    __slots__ = ("_template", "has_series", "help", "labels", "name", "samples", "type")

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), kind: str = GAUGE) -> None:
        self.name = name
        self.help = help_text
        self.type = kind
        self.labels = tuple(labels)
        # (label values, value) from add; a line from add_series, which sets has_series.
        self.samples: list[Any] = []
        self.has_series = False
        self._template: Optional[tuple[str, Optional[list[int]]]] = None

    def add(self, values: Sequence[str], value: float, digits: Optional[int] = None) -> None:
        """A sample: one value per label name, in the family's label order; the value rounded to digits decimal
        places (round) where given."""
        # a whole float is its own rounding: round() (correctly rounded, through dtoa) is skipped for the many whole
        # values (zeros, byte-seconds), with the same result
        self.samples.append((values, value if digits is None or (value.__class__ is float and value.is_integer())
                             else round(value, digits)))

    def series(self, values: Sequence[str]) -> Series:
        """The series of these label values, rendered once for a caller that adds it again and again (the
        long-running mode, docs/performance.md) with add_series: the same lines as add(values, ...) writes."""
        template, order = self.template()
        return Series(template % _ordered(values, order) + " ")

    def add_series(self, series: Series, value: float, digits: Optional[int] = None) -> None:
        """A sample of a series rendered by series(), of this family or of another with its name and labels; the
        value rounded as add rounds it (with the same digits every time: the last line is kept by the value as
        given). A value as given the last time the series was added (Series) takes its last line: neither rounded
        nor formatted again."""
        if value != series.value or copysign(1.0, value) != copysign(1.0, series.value):
            series.value = value
            series.line = f"{series.text}{format_value(value if digits is None else round(value, digits))}\n"
        self.samples.append(series.line)
        self.has_series = True

    def template(self) -> tuple[str, Optional[list[int]]]:
        """A %-template of a sample line up to its value (name, label names in sorted order, quotes), and the
        order in which it takes the label values (None: as given)."""
        if self._template is None:
            labels = self.labels
            order = sorted(range(len(labels)), key=labels.__getitem__)
            template = self.name.replace("%", "%%")
            if labels:
                template += "{" + ",".join(labels[i].replace("%", "%%") + '="%s"' for i in order) + "}"
            self._template = (template, None if order == list(range(len(labels))) else order)
        return self._template


class Series:
    """A series rendered once (Family.series): its sample line up to the value (`name{a="1",b="2"} `), and its last
    line and the value it was given, so that a value unchanged since the last write is not rounded and formatted
    again (Family.add_series). Unchanged: equal and of the same sign, as 0.0 and -0.0 are equal but written apart;
    NaN, unequal to itself, is formatted every time."""

    __slots__ = ("line", "text", "value")

    def __init__(self, text: str) -> None:
        self.text = text
        self.value = math.nan  # no line yet
        self.line = ""


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def format_value(value: float) -> str:
    """A float as Go's strconv writes it (what Prometheus and prometheus_client write)."""
    text = repr(float(value))
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go switches to an exponent from 1e21 down to 7 integer digits here
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if dot < 0:  # an exponent already (1e+22), or inf, -inf, nan
        return _SPECIAL.get(text, text)
    return text


def _ordered(values: Sequence[str], order: Optional[list[int]]) -> tuple[str, ...]:
    """Label values in the template's order, escaped only when one of them needs it (one scan of them joined)."""
    ordered = tuple(values) if order is None else tuple([values[i] for i in order])
    joined = "".join(ordered)
    if "\\" in joined or '"' in joined or "\n" in joined:
        return tuple(map(escape_label_value, ordered))
    return ordered


def _sample_lines(family: Family) -> list[str]:
    """The family's sample lines. One %-template per family holds the fixed text (Family.template)."""
    if family.has_series:
        return _series_lines(family)
    if not family.labels:
        return [f"{family.name} {format_value(value)}\n" for _, value in family.samples]
    template, order = family.template()
    template += " %s\n"
    lines: list[str] = []
    append = lines.append
    formatted: dict[float, str] = {}  # a family repeats its values (1, sizes, percentages): format each once
    # the label values in the template's order by one C call a sample (a list comprehension and a tuple were a
    # quarter of the loop); an order has two labels at least (one label is in order)
    pick = itemgetter(*order) if order is not None and len(order) > 1 else None
    for values, value in family.samples:
        text = formatted.get(value) if value else None  # 0.0 and -0.0 are one key but two texts: not cached
        if text is None:
            text = format_value(value)
            if value:
                formatted[value] = text
        # _ordered, inlined: a call per sample would add 4 % to the loop, which a timer run pays every time
        ordered = tuple(values) if pick is None else pick(values)
        joined = "".join(ordered)
        if "\\" in joined or '"' in joined or "\n" in joined:
            ordered = tuple(map(escape_label_value, ordered))
        append(template % (*ordered, text))
    return lines


def _series_lines(family: Family) -> list[str]:
    """The lines of a family with samples added as rendered series (add_series), label values perhaps among them."""
    return [sample if isinstance(sample, str) else family.series(sample[0]).text + format_value(sample[1]) + "\n"
            for sample in family.samples]


def render(families: Iterable[Family]) -> bytes:
    """The text of the families, encoded. Each family's lines are joined and encoded as soon as they are made, so
    only one family's line objects are alive at a time and the text is never held both as str and as bytes: at
    1,000 processes two megabytes fewer, pages the run would touch for the first time, each a page fault
    (docs/performance.md)."""
    out: list[bytes] = []
    for family in families:
        name = family.name
        out.append(f"# HELP {name} {escape_help(family.help)}\n# TYPE {name} {family.type}\n".encode())
        out.append("".join(_sample_lines(family)).encode("utf-8"))
    return b"".join(out)
