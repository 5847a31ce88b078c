"""The role's constraints file as pip on a host with another Python would read it: the lines whose environment
marker holds for PYTHON_VERSION, markers dropped. pip evaluates markers for the interpreter it runs on, so the
controller's pip, downloading wheels for a Debian 11 guest's Python 3.9 (prepare.yml), would otherwise take the
pins meant for its own Python.

    constraints_for.py CONSTRAINTS PYTHON_VERSION OUT
"""

import sys

from packaging.requirements import Requirement


def main() -> None:
    source, version, out = sys.argv[1:]
    environment = {"python_version": version, "python_full_version": f"{version}.0"}
    kept = []
    with open(source, encoding="utf-8") as f:
        for line in f:
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                requirement.marker = None
                kept.append(str(requirement))
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")


if __name__ == "__main__":
    main()
