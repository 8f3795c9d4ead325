"""The device image's install steps are the tested ones: the Dockerfile and `make setup` run the
same scripts/install.sh, and the Dockerfile's own COPY and RUN lines, carried out here without a
container engine (none runs on these machines) into a fresh venv, give a working device install:
`edgepart run` there, LiteRT in, none of the workstation's packages, and the onnxruntime build it
was told to use (docs/architecture.md, "Device and workstation installs"), given as a wheel in the
build context's wheels/ folder, the context filtered by .dockerignore as docker filters it. The
install script reads pyproject.toml with the standard library only, so it runs on Python 3.10
(JetPack's), and stops at once where it cannot."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Callable

import onnxruntime
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import dependencies  # noqa: E402  scripts/dependencies.py, install.sh's reader of pyproject.toml

sys.path.pop(0)


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


def _dockerignored(root: Path) -> Callable[[str], bool]:
    """A predicate on paths relative to `root`: whether .dockerignore leaves them out of the build
    context (docker's rules: patterns from the context's root, `**` any depth, a folder's pattern
    covers what it holds, `!` takes a path back, the last matching line decides)."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = "".join("(.*/)?" if tok == "**/" else ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]"
                     if tok == "?" else re.escape(tok) for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pat))
        rules.append((re.compile(rx), keep))

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = False
        for rx, keep in rules:
            if any(rx.fullmatch(p) for p in prefixes):
                out = not keep
        return out

    return ignored


def _context(dest: Path) -> Path:
    """The build context docker would send: the checkout less what .dockerignore leaves out."""
    ignored = _dockerignored(REPO)
    for top, dirs, files in os.walk(REPO):
        rel = Path(top).relative_to(REPO)
        dirs[:] = [d for d in dirs if not ignored((rel / d).as_posix())]
        for f in files:
            if not ignored((rel / f).as_posix()):
                (dest / rel).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(top) / f, dest / rel / f)
    return dest


def test_the_dependency_reader_reads_what_tomllib_reads():
    text = (REPO / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    assert dependencies.read(text) == (project["dependencies"], project["optional-dependencies"])
    # what this reader may meet: comments with # and brackets in strings, one-line arrays, single quotes,
    # an array of tables, escapes, a table called like a key elsewhere
    tricky = ('[project]\nname = "x"  # [not a table]\ndependencies = [ # the device\n  "numpy>=1.24",  # a "comment"\n'
              '  \'onnxruntime>=1.17\', "a[b,c]>=1 ; python_version >= \\"3.10\\"",\n  "d#e",\n]\n'
              '[[tool.x]]\ndependencies = ["no"]\n[project.optional-dependencies]\nlitert = ["ai-edge-litert>=2.3"]\n'
              'two = [\n  "onnxruntime-gpu", # [\n  "p[q]",\n]\nempty = []\n[tool.y]\ndependencies = ["no"]\n')
    p = tomllib.loads(tricky)["project"]
    assert dependencies.read(tricky) == (p["dependencies"], p["optional-dependencies"])
    assert dependencies.requirements(tricky, ["two", "empty"]) == [
        "numpy>=1.24", 'a[b,c]>=1 ; python_version >= "3.10"', "d#e", "onnxruntime-gpu", "p[q]"]
    with pytest.raises(dependencies.PyprojectError, match="no extra 'nosuch'"):
        dependencies.requirements(tricky, ["nosuch"])
    for bad in ('[project]\ndependencies = ["a", b]\n', '[project]\nname = "x"\n',
                '[project]\ndependencies = []\noptional-dependencies = {a = ["b"]}\n'):
        with pytest.raises(dependencies.PyprojectError):
            dependencies.requirements(bad, ["a"])


def _python310() -> str | None:
    """A real Python 3.10 (JetPack's version, without tomllib) on this machine, where there is one."""
    for cand in [shutil.which("python3.10"), *glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")),
                 "/usr/bin/python3.10"]:
        if cand and os.access(cand, os.X_OK):
            r = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip() == "(3, 10)":
                return cand
    return None


def test_the_install_script_reads_the_dependencies_on_python_3_10():
    py310 = _python310()
    if py310 is None:
        pytest.skip("no Python 3.10 on this machine")
    assert subprocess.run([py310, "-c", "import tomllib"], capture_output=True).returncode != 0
    args = [str(REPO / "scripts" / "dependencies.py"), str(REPO / "pyproject.toml"), "packager,litert"]
    old = subprocess.run([py310, *args], capture_output=True, text=True, timeout=60)
    assert old.returncode == 0, old.stderr
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    want = [r for r in project["dependencies"] + project["optional-dependencies"]["packager"]
            + project["optional-dependencies"]["litert"] if not r.startswith("onnxruntime")]
    assert old.stdout.splitlines() == want


def test_the_install_script_stops_at_once_where_it_cannot_read_the_dependencies(tmp_path):
    # a venv without pip: had the script gone on past the dependencies, its first pip call would say
    # so; nothing gets installed anywhere
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = {**os.environ, "EDGEPART_ONNXRUNTIME": "onnxruntime"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), str(venv / "bin" / "python"), "litert,nosuch"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "no extra 'nosuch'" in r.stderr and "nothing was installed" in r.stderr, r.stderr
    assert "No module named pip" not in r.stderr, r.stderr
    assert "installed;" not in r.stdout


def test_the_install_script_expands_no_array_unguarded():
    # bash 3.2 (macOS) under `set -u` fails on "${A[@]}" of an empty array: each is ${A[@]+"${A[@]}"}
    script = (REPO / "scripts" / "install.sh").read_text()
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in script.splitlines())
    assert "tomllib" not in code and "mapfile" not in code  # Python 3.10; bash 3.2 has no mapfile
    expansions = re.findall(r'(.)"\$\{(\w+)\[@\]\}"', code)
    assert expansions and all(before == "+" for before, _ in expansions), expansions


def test_the_local_wheel_folder_is_copied_and_the_examples_agree():
    steps = _instructions(REPO / "Dockerfile")
    assert ("COPY", "wheels wheels") in steps and (REPO / "wheels" / ".gitkeep").is_file()
    # every example names a wheel inside the copied folder, in the Dockerfile and in README alike
    examples = re.findall(r"ONNXRUNTIME=(\S+\.whl)", (REPO / "Dockerfile").read_text() + (REPO / "README.md").read_text())
    assert len(examples) >= 2 and all(e.startswith("wheels/") for e in examples), examples
    ignored = _dockerignored(REPO)
    for rel in (".venv/bin/python", ".git/HEAD", "sdk/__pycache__/x.pyc", "dist/a/manifest.json", "build/lib/x.py"):
        assert ignored(rel), rel
    for w, a in steps:
        if w == "COPY":
            assert not any(ignored(s) for s in a.split()[:-1]), a
    assert not ignored("wheels/onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl")


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
    # the onnxruntime build given by the ONNXRUNTIME build argument, as a wheel put in the context's
    # wheels/ folder: here PyPI's own, pinned to the version the tests run, the path a Jetson's wheel takes
    context = _context(tmp_path / "context")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(context / "wheels"),
                          f"onnxruntime=={onnxruntime.__version__}"], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    (wheel,) = (context / "wheels").glob("onnxruntime-*.whl")
    args["ONNXRUNTIME"] = f"wheels/{wheel.name}"

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
                if (context / s).is_dir():
                    shutil.copytree(context / s, target)
                else:
                    shutil.copy2(context / s, work / Path(s).name)
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
