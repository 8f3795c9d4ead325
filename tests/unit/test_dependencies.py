"""Every package the code imports is declared in pyproject.toml, in the install that needs it: the
device's modules (sdk/, agent/) only import the base dependencies, the packager's the base plus
its extras (docs/architecture.md, "Device and workstation installs")."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _declared(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in reqs}


# runs inside the TFLite converter's own environment, whose pins (packager/tflite/env.py) it imports from
CONVERTER_ENV_FILES = {REPO / "packager" / "tflite" / "_driver.py"}


def _imports(folder: Path, files: set[Path] | None = None) -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (imports inside functions included)."""
    out: dict[str, set[str]] = {}
    for f in sorted(files) if files is not None else folder.rglob("*.py"):
        if "testing" in f.relative_to(REPO).parts or (files is None and f in CONVERTER_ENV_FILES):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top != "edgepart" and top not in sys.stdlib_module_names:
                    out.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return out


def _distribution(module: str) -> str:
    dists = packages_distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return dists[0].lower().replace("_", "-")


def test_every_import_is_declared_where_it_is_needed():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = _declared(meta["dependencies"])
    extras = {k: _declared(v) for k, v in meta["optional-dependencies"].items()}
    problems = []
    for folder in ("sdk", "agent"):
        for mod, files in _imports(REPO / folder).items():
            if _distribution(mod) not in base:
                problems.append(f"{mod} ({_distribution(mod)}), imported by {sorted(files)}, is not a base dependency")
    workstation = base | extras["packager"] | extras["models"]
    for mod, files in _imports(REPO / "packager").items():
        if _distribution(mod) not in workstation:
            problems.append(f"{mod} ({_distribution(mod)}), imported by {sorted(files)}, is in no packager install")
    assert not problems, "\n".join(problems)


def test_the_converter_driver_imports_only_what_its_environment_pins():
    from edgepart.packager.tflite.env import PINNED

    pinned = _declared(list(PINNED))
    dist_of = {"onnx2tf": "onnx2tf", "tensorflow": "tensorflow-cpu", "numpy": "numpy", "onnx": "onnx"}
    for mod, files in _imports(REPO, CONVERTER_ENV_FILES).items():
        assert dist_of.get(mod, mod) in pinned, f"{mod}, imported by {sorted(files)}, is not pinned in env.py"
