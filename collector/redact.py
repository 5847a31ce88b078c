"""Command lines for the opt-in `args` label, with the values of anything that looks like a secret replaced.

The rules are the table below, each with the form it hides and why (docs/security-series.md, "Command lines").
They err towards hiding: a value that only might be a secret is hidden (`-p 8080` loses its port, `--no-password`
hides the argument after it), because a label leaks to everyone who can query Prometheus, and a hidden port costs
nothing of what the label is for (telling which program holds the GPU).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Callable, NamedTuple, Union

REDACTED = "<redacted>"
MAX_ARGS_CHARS = 1024

# A name that says its value is a secret: in a flag (`--hf-token`), a KEY=value (`AWS_SECRET_ACCESS_KEY=`), a
# header (`Authorization:`) or a URL's query (`?access_token=`). The exceptions are the ML programs' ordinary
# options that contain those words: --max-tokens, --tokenizer, --num-passes, --passthrough, --author.
_SECRETISH = re.compile(
    r"pass(?:word|wd|phrase)?(?!es|through|ing)|pwd|(?:^|[-_.])pw(?:$|[-_.])|token(?!s|iz)|secret|credential"
    r"|api[-_]?key|(?:^|[-_.])key(?:$|[-_.])|auth(?!ors?(?![a-z]))|private|cookie|signature", re.IGNORECASE)


def _secretish(name: str) -> bool:
    return bool(_SECRETISH.search(name.lstrip("-")))


class Rule(NamedTuple):
    """One argument's text rewritten: every match of pattern replaced (re.sub) by replacement."""

    pattern: re.Pattern[str]
    replacement: Union[str, Callable[[re.Match[str]], str]]
    why: str


def _header(match: re.Match[str]) -> str:
    return f"{match.group(1)}{REDACTED}" if _secretish(match.group(2)) else match.group(0)


def _named(match: re.Match[str]) -> str:
    return f"{match.group(1)}={REDACTED}" if _secretish(match.group(1)) else match.group(0)


def _query(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}={REDACTED}" if _secretish(match.group(2)) else match.group(0)


# Rules on one argument, in order; each sees what the ones before it left.
ARGUMENT_RULES = (
    Rule(re.compile(r"^((?:--header=)?\s*([A-Za-z0-9-]+):\s*).+$", re.DOTALL), _header,
         "an HTTP header with a secret (`Authorization: Bearer ...`, `X-Api-Key: ...`, `Cookie: ...`), alone "
         "(after -H or --header) or as --header=<header>"),
    Rule(re.compile(r"^(-{1,2}[^=\s]+|[A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL), _named,
         "a --flag=value or KEY=value whose name says secret (`--password=`, `--pw=`, `token=`, `secret=`, "
         "`AWS_SECRET_ACCESS_KEY=`)"),
    Rule(re.compile(r"(://(?:[^/@:\s]+:)?)[^/@\s]+@"), rf"\1{REDACTED}@",
         "a URL's password (`https://user:pw@host`: the user name stays), or its user name when it has no password "
         "(`https://<token>@host`: a token given as the user name)"),
    Rule(re.compile(r"([?&;])([^=&;#\s]+)=[^&;#\s]*"), _query,
         "a URL query parameter whose name says secret (`?access_token=`, `&X-Amz-Signature=`)"),
)

# Flags that say what the next argument is (and the same flag with its value attached: `-phunter2`).
PASSWORD_FLAGS = ("-p",)  # mysql's and others' password; also ssh's port, hidden too (see the docstring)
# `user:password` (curl -u, --user, --proxy-user): the part after the first colon is hidden, a bare user kept
USER_PASSWORD_FLAGS = ("-u", "--user", "-U", "--proxy-user")
HEADER_FLAGS = ("-H", "--header")  # a header: ARGUMENT_RULES' first rule
NAMED = "named"  # any other flag whose name says secret (`--password hunter2`, `--api-key k`): all it takes


def _one(arg: str) -> str:
    for rule in ARGUMENT_RULES:
        arg = rule.pattern.sub(rule.replacement, arg)
    return arg


def _user_password(arg: str) -> str:
    user, colon, _ = arg.partition(":")
    return f"{user}:{REDACTED}" if colon else arg


def _value(flag: str, arg: str) -> str:
    """The argument after flag (one of the flags above, or NAMED), as the label shows it."""
    if flag in USER_PASSWORD_FLAGS:
        return _user_password(arg)
    if flag in HEADER_FLAGS:
        return _one(arg)
    return REDACTED


def _takes_value(arg: str) -> str:
    """The flag whose value the next argument is ("" for none)."""
    if arg in PASSWORD_FLAGS or arg in USER_PASSWORD_FLAGS or arg in HEADER_FLAGS:
        return arg
    if arg.startswith("-") and "=" not in arg and _secretish(arg):
        return NAMED  # also after `-password` (a short flag's value, or a long flag after one dash: both hidden)
    return ""


def _short_with_value(arg: str) -> bool:
    return not arg.startswith("--") and len(arg) > 2 and arg[:2] in (*PASSWORD_FLAGS, *USER_PASSWORD_FLAGS,
                                                                     *HEADER_FLAGS)


def _attached(arg: str) -> str:
    """A short flag with its value attached (`-phunter2`, `-uuser:pw`, `-HAuthorization: x`), or any other
    argument, as the label shows it."""
    if arg.startswith("-") and _short_with_value(arg):
        return arg[:2] + _value(arg[:2], arg[2:])
    return _one(arg)


def redact_args(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    flag = ""  # the flag whose value this argument is
    for arg in args:
        if flag:
            out.append(_value(flag, arg))
            flag = ""
            continue
        flag = _takes_value(arg)
        out.append(_attached(arg) if flag in ("", NAMED) else arg)
    return out


def args_label(args: Sequence[str]) -> str:
    """The redacted command line as one label value, cut to 1 KiB."""
    return " ".join(redact_args(args))[:MAX_ARGS_CHARS]
