"""Command lines for the opt-in `args` label, with the values of anything that looks like a secret replaced.

Redacted: the value of a flag whose name mentions a password, token, key, secret or credential (`--password=x`,
`--api-key x`), of a `KEY=value` pair whose key does (`AWS_SECRET_ACCESS_KEY=...`), and the password of a URL
(`https://user:pw@host`). It errs towards hiding: a flag like `--no-password` also hides the argument after it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REDACTED = "<redacted>"
MAX_ARGS_CHARS = 1024
_SECRETISH = re.compile(r"pass(?:word|wd|phrase)?|pwd|token|secret|credential|api[-_]?key|(?:^|[-_.])key(?:$|[-_.])"
                        r"|auth|private", re.IGNORECASE)
_FLAG_WITH_VALUE = re.compile(r"^(-{1,2}[^=\s]+)=(.*)$", re.DOTALL)
_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@\s/]+@")


def _secretish(name: str) -> bool:
    return bool(_SECRETISH.search(name.lstrip("-")))


def redact_args(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag = _FLAG_WITH_VALUE.match(arg)
        pair = _KEY_VALUE.match(arg)
        if flag and _secretish(flag.group(1)):
            out.append(f"{flag.group(1)}={REDACTED}")
        elif pair and _secretish(pair.group(1)):
            out.append(f"{pair.group(1)}={REDACTED}")
        elif arg.startswith("-") and _secretish(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(_URL_PASSWORD.sub(r"\1" + REDACTED + "@", arg))
    return out


def args_label(args: Sequence[str]) -> str:
    """The redacted command line as one label value, cut to 1 KiB."""
    return " ".join(redact_args(args))[:MAX_ARGS_CHARS]
