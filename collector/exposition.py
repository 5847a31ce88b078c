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
from typing import Optional

GAUGE = "gauge"
COUNTER = "counter"


class Family:
    """One metric family: a name, its help, its type, its label names, and the samples added to it."""

    __slots__ = ("help", "labels", "name", "samples", "type")

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), kind: str = GAUGE) -> None:
        self.name = name
        self.help = help_text
        self.type = kind
        self.labels = tuple(labels)
        self.samples: list[tuple[Sequence[str], float]] = []

    def add(self, values: Sequence[str], value: float) -> None:
        """A sample: one value per label name, in the family's label order."""
        self.samples.append((values, value))


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A float as Go's strconv writes it (what Prometheus and prometheus_client write)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent from 1e21 down to 7 integer digits here
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label_order(labels: Sequence[str]) -> Optional[list[int]]:
    """The positions of the label names in sorted order; None when already sorted."""
    order = sorted(range(len(labels)), key=labels.__getitem__)
    return None if order == list(range(len(labels))) else order


def render(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    append = out.append
    for family in families:
        name = family.name
        append(f"# HELP {name} {escape_help(family.help)}\n")
        append(f"# TYPE {name} {family.type}\n")
        if not family.labels:
            for _, value in family.samples:
                append(f"{name} {format_value(value)}\n")
            continue
        order = _label_order(family.labels)
        names = [family.labels[i] for i in order] if order else list(family.labels)
        prefixes = [f'{label}="' for label in names]
        prefixes[1:] = ['",' + p for p in prefixes[1:]]
        head = name + "{"
        for values, value in family.samples:
            ordered = [values[i] for i in order] if order else values
            pairs = "".join(p + escape_label_value(v) for p, v in zip(prefixes, ordered))
            append(f'{head}{pairs}"}} {format_value(value)}\n')
    return "".join(out).encode("utf-8")
