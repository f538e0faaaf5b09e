#!/usr/bin/env python3
"""Print the requirements of pyproject.toml's base dependencies plus the named extras, one per line.

Why: an image installs its heavy dependencies in a layer of their own, before the code is copied, so that a
code change does not reinstall torch; the list still comes from pyproject.toml, never from a second pin list.

Usage: pyproject-requirements.py PYPROJECT [EXTRA[,EXTRA...]]
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """Base dependencies followed by each extra's, de-duplicated in order."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))

    def add(extra: str) -> None:
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra named {extra!r} (have: {', '.join(sorted(optional))})")
        for req in optional[extra]:
            if req.startswith(f"{name}["):  # an extra that includes others: kubeforge[ml]
                for inner in req[len(name) + 1 : req.index("]")].split(","):
                    add(inner.strip())
            elif req not in out:
                out.append(req)

    for extra in extras:
        add(extra)
    return out


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    extras = [e.strip() for e in (sys.argv[2] if len(sys.argv) == 3 else "").split(",") if e.strip()]
    print("\n".join(requirements(sys.argv[1], extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
