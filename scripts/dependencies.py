"""Print edgepart's pip requirements, one a line, for scripts/install.sh: `[project] dependencies` and
those of each extra asked for, from pyproject.toml, leaving out onnxruntime (install.sh installs the
build it was given instead; README, "Install").

    python scripts/dependencies.py PYPROJECT [EXTRAS]      EXTRAS: comma-separated, may be empty

It runs on the interpreter being installed into, before anything is installed, so it needs nothing
but the standard library of any Python edgepart supports: Python 3.10 (a Jetson's JetPack Python)
has no tomllib. It reads the subset of TOML this pyproject uses (tables, and arrays of strings,
over several lines, with comments), and refuses anything else in the places it reads, so it never
guesses. Any failure: exit status 2 and one line on stderr saying what and where.
"""

from __future__ import annotations

import re
import sys

_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\'([^\'\n]*)\'')
_KEY = re.compile(r'^\s*("?)([A-Za-z0-9_.-]+)\1\s*=\s*(.*)$', re.S)
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/"}


class PyprojectError(Exception):
    pass


def _code(line: str) -> str:
    """The line without its comment (a # outside any string)."""
    quote = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
        i += 1
    return line


def _strings(value: str, where: str) -> list[str]:
    """The items of a TOML array of strings (`value` holds the whole array, brackets included)."""
    body = value.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise PyprojectError(f"{where}: expected an array of strings, found {body[:60]!r}")
    items = []
    for m in _STRING.finditer(body):
        if m.group(1) is not None:
            items.append(re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(0)), m.group(1)))
        else:
            items.append(m.group(2))
    rest = _STRING.sub("", body[1:-1])
    if rest.replace(",", "").strip():
        raise PyprojectError(f"{where}: expected an array of strings, found {rest.strip()[:60]!r} in it")
    return items


def _open(value: str) -> bool:
    """Whether an array's brackets are still open (brackets inside strings, "edgepart[litert]", aside)."""
    bare = _STRING.sub("", value)
    return bare.count("[") > bare.count("]")


def read(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(`[project] dependencies`, `[project.optional-dependencies]` by extra) from pyproject.toml's text."""
    table = ""
    deps: list[str] | None = None
    extras: dict[str, list[str]] = {}
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        start = n + 1
        stmt = _code(lines[n])
        n += 1
        head = stmt.strip()
        if head.startswith("["):  # a table, or an array of tables: either ends the one before
            table = head.strip("[] \t")
            continue
        m = _KEY.match(stmt)
        if table not in ("project", "project.optional-dependencies") or not m:
            continue
        key, value = m.group(2), m.group(3)
        if table == "project" and key not in ("dependencies", "optional-dependencies"):
            continue
        # an array over several lines: up to the line that closes it
        while value.strip().startswith("[") and _open(value) and n < len(lines):
            value += "\n" + _code(lines[n])
            n += 1
        where = f"pyproject.toml line {start}, [{table}] {key}"
        if table == "project" and key == "optional-dependencies":
            raise PyprojectError(f"{where}: an inline table, which this reader does not read; write it as a "
                                 f"[project.optional-dependencies] table")
        if table == "project":
            deps = _strings(value, where)
        else:
            extras[key] = _strings(value, where)
    if deps is None:
        raise PyprojectError("pyproject.toml has no `dependencies` array in its [project] table")
    return deps, extras


def requirements(text: str, extras: list[str]) -> list[str]:
    """The requirements of the base install and of `extras`, in order, without onnxruntime."""
    deps, known = read(text)
    reqs = list(deps)
    for extra in extras:
        if extra not in known:
            raise PyprojectError(f"edgepart has no extra {extra!r}; its extras are {', '.join(known) or 'none'}")
        reqs += known[extra]
    name = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    out = []
    for r in reqs:
        m = name.match(r)
        if m is None:
            raise PyprojectError(f"pyproject.toml: {r!r} is not a requirement")
        if re.sub(r"[-_.]+", "-", m.group(1)).lower() != "onnxruntime":
            out.append(r)
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: dependencies.py PYPROJECT [EXTRAS]", file=sys.stderr)
        return 2
    extras = [e.strip() for e in (argv[2] if len(argv) == 3 else "").split(",") if e.strip()]
    try:
        with open(argv[1], encoding="utf-8") as f:
            text = f.read()
        print("\n".join(requirements(text, extras)))
    except (OSError, UnicodeDecodeError, PyprojectError) as e:
        print(f"scripts/dependencies.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
