"""The device image's install steps are the tested ones: the Dockerfile and `make setup` run the
same scripts/install.sh, and the Dockerfile's own COPY and RUN lines, carried out here without a
container engine (none runs on these machines) into a fresh venv, give a working device install:
`edgepart run` there, LiteRT in, none of the workstation's packages, and the onnxruntime build it
was told to use (docs/architecture.md, "Device and workstation installs")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) for each line of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_make_setup_and_the_image_run_the_same_install_script():
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^\tscripts/install\.sh \$\(PY\) \S*packager\S* --editable$", make, re.M), "make setup"
    runs = [a for w, a in _instructions(REPO / "Dockerfile") if w == "RUN"]
    assert any("scripts/install.sh python3" in r for r in runs), runs
    assert ("ENTRYPOINT", '["edgepart", "run"]') in _instructions(REPO / "Dockerfile")


def test_the_dockerfile_install_steps_give_a_small_working_device_install(tmp_path):
    steps = _instructions(REPO / "Dockerfile")
    args = {}
    for w, a in steps:
        if w == "ARG":
            k, _, v = a.partition("=")
            args[k] = v.strip('"')
    assert args["EXTRAS"] == "litert" and args["ONNXRUNTIME"] == ""
    # the onnxruntime build given by the ONNXRUNTIME build argument: here PyPI's own, pinned to the
    # version the tests run, which exercises the path a Jetson's wheel takes
    args["ONNXRUNTIME"] = f"onnxruntime=={onnxruntime.__version__}"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"  # `python3` in the RUN lines is the image's: the new venv's
    env.update(args)
    work = tmp_path / "image"
    work.mkdir()
    for w, a in steps:
        if w == "WORKDIR":
            continue  # the build context's copy lives in `work`
        if w == "COPY":
            *srcs, dst = a.split()
            for s in srcs:
                target = work / dst if dst not in (".", "./") else work / s
                if (REPO / s).is_dir():
                    shutil.copytree(REPO / s, target if dst not in (".", "./") else work / s,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(REPO / s, work / Path(s).name)
        elif w == "RUN":
            r = subprocess.run(["bash", "-c", a], cwd=work, env=env, capture_output=True, text=True, timeout=480)
            assert r.returncode == 0, f"RUN {a}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    # what the image holds: the agent's CLI, LiteRT, onnxruntime, and none of the workstation's packages
    py = str(venv / "bin" / "python")
    probe = ("import importlib.util as u, edgepart, edgepart.agent, onnxruntime, ai_edge_litert\n"
             "from edgepart.litert import litert_runtime\n"
             "print(litert_runtime(), onnxruntime.__version__, "
             "[m for m in ('onnx', 'torch', 'scipy', 'yaml', 'matplotlib') if u.find_spec(m)])")
    r = subprocess.run([py, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[:2] == ["ai-edge-litert", onnxruntime.__version__] and r.stdout.strip().endswith("[]"), r.stdout
    h = subprocess.run([str(venv / "bin" / "edgepart"), "run", "--help"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert h.returncode == 0 and "--providers" in h.stdout, h.stderr[-2000:]
    dists = subprocess.run([py, "-m", "pip", "list", "--format=freeze"], env=env, capture_output=True, text=True,
                           timeout=120).stdout.lower()
    assert dists.count("onnxruntime") == 1, "one onnxruntime only: a second one would hide the first's providers"
