"""Entry point of `python -m collector` and of the gpu-proc-collector script (pyproject.toml [project.scripts])."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # The imports make tens of thousands of objects and no garbage, yet the cyclic collector would walk them at
    # every threshold crossing, and all of them once more at exit (docs/performance.md measures it). So: no
    # collection while importing, then what the imports made is moved out of the collector's sight (gc.freeze,
    # https://docs.python.org/3/library/gc.html#gc.freeze). What the run makes is collected as usual, in the
    # long-running --interval mode too.
    gc.disable()
    try:
        from collector.cli import main as run  # noqa: PLC0415 - imported under the settings above
    finally:
        gc.freeze()
        gc.enable()
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
