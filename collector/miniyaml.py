"""A reader for the YAML that CDI spec files are written in, so the collector needs no YAML library.

CDI's own writer (tags.cncf.io/container-device-interface `Spec.write`, used by NVIDIA's DRA driver and by
`nvidia-ctk cdi generate`) marshals the spec with go-yaml v3 behind a `---` line; hand-written specs use the same
few constructs. This module reads one document of:

- block mappings and block sequences, including sequences at their key's indentation and compact nesting
  (`- name: x` / `- - a`);
- plain scalars (several lines folded into one), single- and double-quoted scalars (escapes, folding), and
  literal / folded block scalars (`|`, `>`, with chomping and indentation indicators);
- flow sequences and mappings (`[ro, nosuid]`, `{}`), over several lines;
- comments, a leading `---`, a trailing `...`.

What it does not read raises `YamlUnsupported`, never a guess: anchors and aliases, tags, complex (`?`) keys,
directives, several documents. Input that is not YAML raises `YamlMalformed`; so do duplicate keys, which CDI's
strict loader rejects too. Plain scalars become null, booleans, integers and floats only in the spellings on
which YAML 1.1 and 1.2 agree (`null`, `~`, `true`, `False`, `12`, `-3`, `0x1f`, `1.5`, `.inf`); everything else
stays a string. The CDI fields the collector reads are all strings.

tests/test_cdi.py holds it to PyYAML's answers on generated documents in PyYAML's own styles and on
go-yaml-shaped specs.
"""

from __future__ import annotations

import re
from typing import Any, Optional

MAX_DEPTH = 64


class YamlError(ValueError):
    """The text cannot be read; the message says where and why in one line."""


class YamlMalformed(YamlError):
    """Not YAML (or YAML that CDI's strict loader rejects, like duplicate keys)."""


class YamlUnsupported(YamlError):
    """YAML this reader does not take (anchors, aliases, tags, complex keys, directives, several documents)."""


_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+][0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = {".nan", ".NaN", ".NAN"}
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
            "P": "\u2029"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_FLOW_INDICATORS = ",[]{}"
_BLANK = " \t"


_WORDS: dict[str, Any] = {**dict.fromkeys(_NULL), **dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False),
                          **dict.fromkeys(_NAN, float("nan"))}


def resolve_plain(text: str) -> Any:
    """A plain scalar's value, in the spellings YAML 1.1 and 1.2 read alike."""
    if text in _WORDS:
        return _WORDS[text]
    value: Any = text
    if _INT.fullmatch(text):
        value = int(text)
    elif _HEX.fullmatch(text):
        value = int(text, 16)
    elif _FLOAT.fullmatch(text):
        value = float(text)
    elif _INF.fullmatch(text):
        value = float(text.replace(".", "").lower())
    return value


def load(text: str) -> Any:
    """The one document in text. Raises YamlMalformed or YamlUnsupported."""
    return _Parser(text).document()


class _Parser:
    def __init__(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.i = 0  # the current line
        self.depth = 0

    # ---- errors and lines ----

    def malformed(self, why: str, line: Optional[int] = None) -> YamlMalformed:
        return YamlMalformed(f"line {(self.i if line is None else line) + 1}: {why}")

    def unsupported(self, why: str) -> YamlUnsupported:
        return YamlUnsupported(f"line {self.i + 1}: {why} (outside the YAML this reader takes)")

    def line(self, i: Optional[int] = None) -> str:
        i = self.i if i is None else i
        return self.lines[i] if i < len(self.lines) else ""

    @staticmethod
    def indent(text: str) -> int:
        return len(text) - len(text.lstrip(" "))

    def is_marker(self, i: int, marker: str) -> bool:
        text = self.line(i)
        return text.startswith(marker) and (len(text) == 3 or text[3] in _BLANK)

    def has_content(self, i: int) -> bool:
        body = self.lines[i].strip(_BLANK)
        return bool(body) and not body.startswith("#")

    def next_content(self) -> bool:
        """Moves to the next line with content (skipping blank and comment lines); False at the end of the
        document."""
        while self.i < len(self.lines):
            if self.is_marker(self.i, "---") or self.is_marker(self.i, "..."):
                return False
            if self.has_content(self.i):
                text = self.lines[self.i]
                lead = text[: len(text) - len(text.lstrip(_BLANK))]
                if "\t" in lead:
                    raise self.malformed("a tab in the indentation")
                return True
            self.i += 1
        return False

    def end_of_value(self, text: str, at: int) -> None:
        """After a value, only blanks and a comment may follow on its line."""
        rest = text[at:]
        body = rest.lstrip(_BLANK)
        if body and not (body.startswith("#") and len(body) < len(rest)):
            raise self.malformed(f"unexpected text after a value: {body[:20]!r}")

    # ---- documents ----

    def document(self) -> Any:
        while self.i < len(self.lines) and not self.has_content(self.i):
            self.i += 1
        if self.i < len(self.lines) and self.lines[self.i].startswith("%"):
            raise self.unsupported("a directive")
        if self.is_marker(self.i, "..."):
            raise self.malformed("a document end marker with no document")
        value: Any = None
        if self.is_marker(self.i, "---"):
            text = self.lines[self.i]
            at = len(text) - len(text[3:].lstrip(_BLANK))
            if at < len(text) and text[at] != "#":  # `--- value`: the top-level node starts on the marker's line
                value = self.inline_value(at, -1)
            else:
                self.i += 1
                value = self.block_node(parent=-1)
        else:
            value = self.block_node(parent=-1)
        if self.next_content():
            raise self.malformed("text after the document's top-level node")
        if self.is_marker(self.i, "..."):
            self.end_of_value(self.line(), 3)
            self.i += 1
        while self.i < len(self.lines):
            if self.is_marker(self.i, "---"):
                raise self.unsupported("a second document")
            if self.has_content(self.i) and not self.is_marker(self.i, "..."):
                raise self.malformed("text after the end of the document")
            self.i += 1
        return value

    # ---- block structure ----

    def block_node(self, parent: int, sequence_at_parent: bool = False) -> Any:
        """The node on the lines below a `key:` or `-` with nothing after it (None if there is none)."""
        if not self.next_content():
            return None
        text = self.line()
        column = self.indent(text)
        if column > parent or (sequence_at_parent and column == parent and self.is_entry(text, column)):
            return self.node(column, parent)
        return None

    @staticmethod
    def is_entry(text: str, column: int) -> bool:
        return text.startswith("-", column) and (column + 1 == len(text) or text[column + 1] in _BLANK)

    def node(self, column: int, parent: int) -> Any:
        """The node starting at `column` of the current line."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.malformed(f"nested deeper than {MAX_DEPTH} levels")
        try:
            text = self.line()
            if self.is_entry(text, column):
                return self.block_sequence(column)
            if self.map_key(text, column) is not None:
                return self.block_mapping(column)
            return self.inline_value(column, parent)
        finally:
            self.depth -= 1

    def block_sequence(self, column: int) -> list[Any]:
        items: list[Any] = []
        while True:
            text = self.line()
            after = column + 1
            while after < len(text) and text[after] in _BLANK:
                after += 1
            if after >= len(text) or text[after] == "#":
                self.i += 1
                items.append(self.block_node(parent=column))
            else:
                items.append(self.node(after, column))
            if not self.next_content():
                return items
            text = self.line()
            found = self.indent(text)
            if found < column or (found == column and not self.is_entry(text, column)):
                return items  # the enclosing node goes on (a key of a mapping whose value this sequence was)
            if found > column:
                raise self.malformed("a sequence entry expected at this indentation")

    def block_mapping(self, column: int) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        while True:
            text = self.line()
            found = self.map_key(text, column)
            if found is None:
                raise self.malformed("a mapping key expected at this indentation")
            key, after = found
            if key in mapping:
                raise self.malformed(f"duplicate key {key!r}")
            while after < len(text) and text[after] in _BLANK:
                after += 1
            if after >= len(text) or text[after] == "#":
                self.i += 1
                mapping[key] = self.block_node(parent=column, sequence_at_parent=True)
            else:
                mapping[key] = self.inline_value(after, column)
            if not self.next_content():
                return mapping
            found_indent = self.indent(self.line())
            if found_indent < column:
                return mapping
            if found_indent > column:
                raise self.malformed("bad indentation of a mapping entry")

    def map_key(self, text: str, column: int) -> Optional[tuple[Any, int]]:
        """(key, index after its colon) when a mapping entry starts at column; None when none does."""
        first = text[column] if column < len(text) else ""
        if first in "&*!":
            raise self.unsupported("an anchor, alias or tag")
        if first == "?" and (column + 1 == len(text) or text[column + 1] in _BLANK):
            raise self.unsupported("a complex mapping key")
        if first in "\"'":
            return self.quoted_map_key(text, column)
        if first in "[]{},|>#%@`" or (first in "-:" and (column + 1 == len(text) or text[column + 1] in _BLANK)):
            return None
        for end in range(column, len(text)):
            ch = text[end]
            if ch == ":" and (end + 1 == len(text) or text[end + 1] in _BLANK):
                return resolve_plain(text[column:end].rstrip(_BLANK)), end + 1
            if ch == "#" and text[end - 1] in _BLANK:
                break
        return None

    def quoted_map_key(self, text: str, column: int) -> Optional[tuple[Any, int]]:
        quoted = self.quoted_key(column)
        if quoted is None:
            return None
        key, end = quoted
        while end < len(text) and text[end] in _BLANK:
            end += 1
        if end < len(text) and text[end] == ":" and (end + 1 == len(text) or text[end + 1] in _BLANK):
            return key, end + 1
        return None

    def quoted_key(self, column: int) -> Optional[tuple[str, int]]:
        """The quoted scalar at column when it ends on its own line (a key can be nothing longer)."""
        line = self.i
        try:
            value, end = self.quoted(column)
        except YamlMalformed:
            value, end = "", -1
        moved, self.i = self.i != line, line
        return None if moved or end < 0 else (value, end)

    # ---- values on the line of their key or entry ----

    def inline_value(self, at: int, parent: int) -> Any:
        """The value that starts at `at` of the current line; leaves the current line after it."""
        text = self.line()
        first = text[at]
        if first in "&*!":
            raise self.unsupported("an anchor, alias or tag")
        if first in "\"'":
            value, end = self.quoted(at)
            self.end_of_value(self.line(), end)
            self.i += 1
            return value
        if first in "[{":
            reader = _FlowReader(self, at)
            value = reader.collection()
            self.end_of_value(self.line(), reader.pos)
            self.i += 1
            return value
        if first in "|>":
            return self.block_scalar(at, parent)
        if first in "%@`,]}#":
            raise self.malformed(f"{first!r} cannot start a value")
        if first in "-?:" and (at + 1 == len(text) or text[at + 1] in _BLANK):
            raise self.malformed(f"{first!r} cannot start a value here")
        return resolve_plain(self.plain_block(at, parent))

    def plain_block(self, at: int, parent: int) -> str:
        """A plain scalar in block context, folded over the lines below it that are indented deeper than its
        parent; a comment ends it."""
        piece, commented = self.plain_piece(self.line(), at)
        out = piece
        self.i += 1
        breaks = 0
        while not commented and self.i < len(self.lines):
            text = self.lines[self.i]
            body = text.strip(_BLANK)
            if not body:
                breaks += 1
                self.i += 1
                continue
            if (self.is_marker(self.i, "---") or self.is_marker(self.i, "...") or body.startswith("#")
                    or self.indent(text) <= parent):
                break
            if "\t" in text[: len(text) - len(text.lstrip(_BLANK))]:
                raise self.malformed("a tab in the indentation")
            piece, commented = self.plain_piece(text, len(text) - len(text.lstrip(_BLANK)))
            out += ("\n" * breaks if breaks else " ") + piece
            breaks = 0
            self.i += 1
        return out

    def plain_piece(self, text: str, at: int) -> tuple[str, bool]:
        """One line's part of a plain scalar, and whether a comment ends it."""
        for end in range(at, len(text)):
            ch = text[end]
            if ch == ":" and (end + 1 == len(text) or text[end + 1] in _BLANK):
                raise self.malformed("a mapping value where a plain scalar goes on")
            if ch == "#" and end > at and text[end - 1] in _BLANK:
                return text[at:end].rstrip(_BLANK), True
        return text[at:].rstrip(_BLANK), False

    # ---- quoted scalars ----

    def quoted(self, start: int) -> tuple[str, int]:
        """The quoted scalar at `start` of the current line (it may end on a later line, which becomes the
        current one): (value, index after the closing quote)."""
        double = self.line()[start] == '"'
        out: list[str] = []
        text = self.line()
        pos = start + 1
        while True:
            if pos >= len(text):  # a line break inside the scalar: trailing blanks go, the break folds
                while out and out[-1] in _BLANK:
                    out.pop()
                self.next_quoted_line(out, escaped=False)
                text = self.line()
                pos = len(text) - len(text.lstrip(_BLANK))
                continue
            ch = text[pos]
            if double and ch == '"':
                return "".join(out), pos + 1
            if not double and ch == "'":
                if text.startswith("''", pos):
                    out.append("'")
                    pos += 2
                    continue
                return "".join(out), pos + 1
            if double and ch == "\\":
                if pos + 1 == len(text):  # an escaped line break: no space, the next line's leading blanks go
                    self.next_quoted_line(out, escaped=True)
                    text = self.line()
                    pos = len(text) - len(text.lstrip(_BLANK))
                else:
                    pos = self.escape(text, pos, out)
                continue
            out.append(ch)
            pos += 1

    def escape(self, text: str, pos: int, out: list[str]) -> int:
        code = text[pos + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            return pos + 2
        if code in _HEX_ESCAPES:
            width = _HEX_ESCAPES[code]
            digits = text[pos + 2: pos + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits) \
                    or int(digits, 16) > 0x10FFFF:
                raise self.malformed(f"a bad \\{code} escape")
            out.append(chr(int(digits, 16)))
            return pos + 2 + width
        raise self.malformed(f"an unknown escape \\{code}")

    def next_quoted_line(self, out: list[str], escaped: bool) -> None:
        """Moves to the next line with text inside a quoted scalar; each empty line on the way is a newline,
        and without any, the break is one space (none after an escaped break)."""
        breaks = 0
        while True:
            self.i += 1
            if self.i >= len(self.lines):
                raise self.malformed("a quoted scalar that never ends")
            if self.is_marker(self.i, "---") or self.is_marker(self.i, "..."):
                raise self.malformed("a document marker inside a quoted scalar")
            if self.lines[self.i].strip(_BLANK):
                break
            breaks += 1
        if breaks:
            out.append("\n" * breaks)
        elif not escaped:
            out.append(" ")

    # ---- block scalars ----

    def block_scalar(self, at: int, parent: int) -> str:
        """A literal (|) or folded (>) block scalar whose header is at `at`; leaves the current line after it.
        Read as PyYAML's scanner reads it (scan_block_scalar)."""
        text = self.line()
        header = re.match(r"(?:([-+])([1-9])?|([1-9])([-+])?)?", text[at + 1:])
        assert header is not None  # the pattern matches the empty string
        self.end_of_value(text, at + 1 + header.end())
        minimum = max(parent + 1, 1)
        explicit = int(header[2] or header[3] or 0)
        self.i += 1
        indent = minimum + explicit - 1 if explicit else max(minimum, self.block_indent())
        return self.block_body(indent, folded=text[at] == ">", chomp=header[1] or header[4] or "")

    def block_indent(self) -> int:
        """The deepest indentation among the leading blank lines and the first line with text."""
        lines, last = self.lines, len(self.lines) - 1
        deepest = 0
        for k in range(self.i, last + 1):
            spaces = len(lines[k]) - len(lines[k].lstrip(" "))
            deepest = max(deepest, spaces)
            if spaces < len(lines[k]) or k == last:
                break
        return deepest

    def block_body(self, indent: int, folded: bool, chomp: str) -> str:
        lines = self.lines
        last = len(lines) - 1  # the text after the final line break ("" when the text ends with one)

        def empty(k: int) -> bool:
            return k < last and not lines[k].strip(" ") and len(lines[k]) <= indent

        def content(k: int) -> bool:
            return k <= last and len(lines[k]) > indent and not lines[k][:indent].strip(" ")

        k = self.i
        chunks: list[str] = []
        breaks = 0
        while empty(k):
            breaks += 1
            k += 1
        line_break = ""
        while content(k):
            chunks.append("\n" * breaks)
            body = lines[k][indent:]
            chunks.append(body)
            line_break = "\n" if k < last else ""
            k += 1
            breaks = 0
            while line_break and empty(k):
                breaks += 1
                k += 1
            if not (line_break and content(k)):
                break
            if not (folded and body[0] not in _BLANK and lines[k][indent] not in _BLANK):
                chunks.append(line_break)
            elif not breaks:
                chunks.append(" ")
        if chomp != "-":
            chunks.append(line_break)
        if chomp == "+":
            chunks.append("\n" * breaks)
        self.i = k
        return "".join(chunks)


class _FlowReader:
    """The flow collection grammar over the parser's lines (it moves the parser's current line)."""

    def __init__(self, parser: _Parser, start: int) -> None:
        self.p = parser
        self.pos = start
        self.depth = 0

    @property
    def text(self) -> str:
        return self.p.line()

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else "\n"

    def next_line(self) -> None:
        self.p.i += 1
        if self.p.i >= len(self.p.lines):
            raise self.p.malformed("a flow collection that never ends")
        if self.p.is_marker(self.p.i, "---") or self.p.is_marker(self.p.i, "..."):
            raise self.p.malformed("a document marker inside a flow collection")
        self.pos = 0

    def skip(self) -> None:
        """Blanks, line breaks and comments between flow tokens."""
        while True:
            ch = self.peek()
            if ch in _BLANK:
                self.pos += 1
            elif ch == "#" and (self.pos == 0 or self.text[self.pos - 1] in _BLANK):
                self.pos = len(self.text)
            elif ch == "\n":
                self.next_line()
            else:
                return

    def collection(self) -> Any:
        self.depth += 1
        if self.depth + self.p.depth > MAX_DEPTH:
            raise self.p.malformed(f"nested deeper than {MAX_DEPTH} levels")
        opening = self.peek()
        closing = "]" if opening == "[" else "}"
        self.pos += 1
        items: list[Any] = []
        mapping: dict[Any, Any] = {}
        while True:
            self.skip()
            if self.peek() == closing:
                self.pos += 1
                self.depth -= 1
                return items if opening == "[" else mapping
            if self.peek() in "]},":
                raise self.p.malformed(f"unexpected {self.peek()!r} in a flow collection")
            if opening == "[":
                node = self.node()
                self.skip()
                if self.peek() == ":":
                    raise self.p.unsupported("a mapping inside a flow sequence")
                items.append(node)
            else:
                self.mapping_entry(mapping)
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != closing:
                raise self.p.malformed(f"expected ',' or {closing!r} in a flow collection")

    def mapping_entry(self, mapping: dict[Any, Any]) -> None:
        key = self.node()
        if isinstance(key, (list, dict)):
            raise self.p.unsupported("a collection as a mapping key")
        self.skip()
        value: Any = None
        if self.peek() == ":":
            self.pos += 1
            self.skip()
            if self.peek() not in ",}":
                value = self.node()
                self.skip()
        if key in mapping:
            raise self.p.malformed(f"duplicate key {key!r}")
        mapping[key] = value

    def node(self) -> Any:
        ch = self.peek()
        if ch in "&*!":
            raise self.p.unsupported("an anchor, alias or tag")
        if ch == "?" and self.peek(1) in _BLANK + "\n":
            raise self.p.unsupported("a complex mapping key")
        if ch in "[{":
            return self.collection()
        if ch in "\"'":
            value, end = self.p.quoted(self.pos)
            self.pos = end
            return value
        # PyYAML's scanner (check_plain): in flow context a plain scalar never starts with ':' or '?', and starts
        # with '-' only when a non-blank follows.
        if ch in "#%@`|>:?" or (ch == "-" and self.peek(1) in _BLANK + "\n" + _FLOW_INDICATORS):
            raise self.p.malformed(f"{ch!r} cannot start a flow value")
        return resolve_plain(self.plain())

    def stop(self) -> bool:
        ch = self.peek()
        return (ch == "\n" or ch in _FLOW_INDICATORS or ch == "?"  # PyYAML ends flow plain scalars at ? too
                or (ch == ":" and self.peek(1) in _BLANK + "\n" + _FLOW_INDICATORS)
                or (ch == "#" and self.pos > 0 and self.text[self.pos - 1] in _BLANK))

    def plain(self) -> str:
        """A plain scalar in flow context: it ends at a flow indicator, `: ` or a comment, and goes on over line
        breaks otherwise (folded: one space, or a newline per empty line)."""
        out = ""
        while True:
            start = self.pos
            while not self.stop():
                self.pos += 1
            out += self.text[start:self.pos].rstrip(_BLANK)
            if self.peek() != "\n":
                return out
            breaks = 0
            while True:
                self.next_line()
                while self.peek() in _BLANK:
                    self.pos += 1
                if self.peek() != "\n":
                    break
                breaks += 1
            if self.stop():
                return out
            out += "\n" * breaks if breaks else " "
