"""The built wheel holds every module and imports from a fresh venv (not the editable install); it holds
no test harness (edgepart.testing is not shipped) and requires no packager-only dependency.

A built wheel holds only the packages listed in pyproject's `packages` (docs/architecture.md, "Device
and workstation installs"), so a new sub-package that is not listed there works in the editable
checkout and is missing on a device.
This test builds the wheel from a clean copy of the sources (a `build/` folder left in the checkout
would otherwise leak stale modules into the wheel, and parallel builds would share it), installs it
with `pip install --no-deps` into a new venv, and imports every module from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"sdk": "edgepart", "agent": "edgepart/agent", "packager": "edgepart/packager"}
TOP_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "README.rst", "LICENSE", "LICENSE.txt")


NOT_SHIPPED = REPO / "sdk" / "testing"  # edgepart.testing: harnesses for tests and the demo, deliberately not in the wheel
HARNESS_MODULES = {"emulate", "netns", "zoo"}  # emulation, network namespaces, reference models: never on a device
PACKAGER_ONLY = {"pyyaml", "onnx", "scipy", "matplotlib", "torch"}  # the workstation's dependencies, not a device's


def _source_files() -> dict[str, Path]:
    """wheel path -> source file, for every .py under the three package folders (and py.typed, and the
    package data under data/ folders: pyproject's package-data), except sdk/testing/, which is not shipped."""
    out = {}
    for folder, prefix in PACKAGES.items():
        for f in sorted((REPO / folder).rglob("*")):
            if f.is_relative_to(NOT_SHIPPED):
                continue
            data = "data" in f.relative_to(REPO / folder).parts[:-1] and f.suffix in (".txt", ".onnx", ".tflite", ".json")
            if f.is_file() and (f.suffix == ".py" or f.name == "py.typed" or data) and "__pycache__" not in f.parts:
                out[f"{prefix}/{f.relative_to(REPO / folder).as_posix()}"] = f
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in TOP_FILES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    for folder in PACKAGES:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheelhouse")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out)],
                       cwd=src, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("edgepart-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    want = _source_files()
    assert "edgepart/__init__.py" in want and "edgepart/agent/__init__.py" in want and "edgepart/packager/__init__.py" in want
    missing = sorted(set(want) - names)
    assert not missing, f"not in the wheel (add their packages to [tool.setuptools] packages): {missing}"
    extra = sorted(n for n in names if n.startswith("edgepart/") and n not in want)
    assert not extra, f"in the wheel but not in the sources: {extra}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "edgepart = edgepart.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_holds_no_test_harness(wheel):
    """The device install carries no emulation, namespace or reference-model code: no edgepart/testing/,
    and no module of those names anywhere (moved back by mistake, under another package)."""
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("edgepart/testing/")], "edgepart.testing is in the wheel"
    harness = sorted(n for n in names if n.endswith(".py") and Path(n).stem in HARNESS_MODULES)
    assert not harness, f"test harnesses in the wheel: {harness}"


def _requires_dist(wheel: Path) -> list[tuple[str, str]]:
    """(distribution name, the rest of the line) for every Requires-Dist of the wheel's METADATA."""
    zf = zipfile.ZipFile(wheel)
    meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    out = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            name = re.match(r"[A-Za-z0-9._-]+", req)[0].lower().replace("_", "-").replace(".", "-")
            out.append((name, req))
    return out


def test_base_install_pulls_no_packager_dependency(wheel):
    """`pip install edgepart` (no extra) is what a Jetson or a Pi gets: none of the workstation's
    dependencies (they belong to the `packager` and `models` extras)."""
    reqs = _requires_dist(wheel)
    base = {name for name, req in reqs if "extra ==" not in req}
    assert {"numpy", "onnxruntime", "pyzmq", "zeroconf", "ifaddr"} <= base, base
    assert not base & PACKAGER_ONLY, f"packager-only dependencies of the base install: {sorted(base & PACKAGER_ONLY)}"
    extra_packager = {name for name, req in reqs if re.search(r"extra\s*==\s*['\"]packager['\"]", req)}
    assert {"onnx", "pyyaml"} <= extra_packager, extra_packager


def test_wheel_imports_every_module_from_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                        "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    # The dependencies (numpy, onnx, ...) come from the test venv, appended *after* the new venv's own
    # site-packages; a plain path line does not run the test venv's editable-install hook.
    (site / "_edgepart_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    mods = sorted(
        ".".join(Path(n).with_suffix("").parts).removesuffix(".__init__")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.startswith("edgepart/") and n.endswith(".py") and not n.endswith("__main__.py")
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # only the venv's paths
    probe = (
        "import importlib, json, sys\n"
        f"mods = {mods!r}\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "print(json.dumps(files))\n"
    )
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    files = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(files) == set(mods) and "edgepart" in files
    for m, f in files.items():
        assert Path(f).resolve().is_relative_to(venv.resolve()), f"{m} was imported from {f}, not the new venv"

    cli = subprocess.run([str(venv / "bin" / "edgepart"), "--help"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=env)
    assert cli.returncode == 0 and "package" in cli.stdout, cli.stderr[-2000:]
