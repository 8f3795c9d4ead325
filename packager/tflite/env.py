"""The converter's own virtual environment (docs/tflite.md, "The converter's environment").

onnx2tf pins an older onnx, onnxruntime and numpy than edgepart's and pulls TensorFlow, so it cannot
share the packager's environment: it gets one of its own, made once per machine on first use under
`~/.cache/edgepart/onnx2tf-<version>/` (`$EDGEPART_CACHE/onnx2tf-<version>/` where that is set).

Every package is pinned, the whole dependency tree, and installed with `--no-deps` from binary
wheels only: what was tested is what gets installed, and pip runs no resolver that could pick a
newer release tomorrow. TensorFlow comes as `tensorflow-cpu` (a third of the download of
`tensorflow`, the same `tensorflow` module), which is why onnx2tf's own requirement of `tensorflow`
is left to this list instead of pip.

Creation takes a file lock (two packagers starting at once build it once), builds into the folder,
checks that the converter imports, and writes a stamp file last: a folder without the stamp (an
interrupted build) is removed and built again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from edgepart.errors import ConversionError

log = logging.getLogger("edgepart")

ONNX2TF_VERSION = "1.29.24"
DOWNLOAD_MB = 440  # the wheels below, measured (tensorflow-cpu is 252 MB of it)
INSTALLED_MB = 1900

# `pip freeze` of onnx2tf 1.29.24 with its pinned requirements, tensorflow-cpu in place of tensorflow
# (tested on CPython 3.11, Linux x86-64).
PINNED = (
    "absl-py==2.5.1", "ai-edge-litert==2.1.0", "astunparse==1.6.3", "backports.strenum==1.2.8",
    "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "coloredlogs==15.0.1", "flatbuffers==25.12.19",
    "gast==0.7.0", "google-pasta==0.2.0", "grpcio==1.85.3", "h5py==3.11.0", "humanfriendly==10.0", "idna==3.21",
    "json2onnx==2.0.3", "keras==3.15.1", "libclang==18.1.1", "Markdown==3.11.3", "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4", "mdurl==0.1.2", "ml_dtypes==0.5.1", "mpmath==1.3.0", "namex==0.1.0", "numpy==1.26.4",
    "onnx==1.19.1", "onnx2json==2.0.4", f"onnx2tf=={ONNX2TF_VERSION}", "onnx_graphsurgeon==0.5.8",
    "onnxoptimizer==0.4.2", "onnxruntime==1.23.0", "onnxsim==0.4.36", "opencv-python==4.11.0.86",
    "opt_einsum==3.4.0", "optree==0.20.0", "packaging==26.4", "protobuf==4.25.5", "psutil==5.9.5",
    "Pygments==2.21.0", "requests==2.32.5", "rich==15.0.0", "sam4onnx==2.0.0", "sbi4onnx==1.0.7",
    "scc4onnx==1.0.7", "scs4onnx==1.0.18", "sde4onnx==1.0.0", "sed4onnx==1.0.5",
    "simple_onnx_processing_tools==1.1.32", "sio4onnx==1.0.3", "sit4onnx==1.0.10", "six==1.17.0",
    "sna4onnx==1.0.6", "snc4onnx==1.0.14", "snd4onnx==1.1.7", "sne4onnx==2.0.1", "sng4onnx==2.0.1",
    "soa4onnx==1.0.5", "soc4onnx==1.0.2", "sod4onnx==1.0.0", "sog4onnx==1.0.17", "sor4onnx==1.0.7",
    "spo4onnx==1.0.5", "ssc4onnx==1.0.8", "ssi4onnx==1.0.4", "svs4onnx==1.0.0", "sympy==1.14.0",
    "tensorboard==2.19.0", "tensorboard-data-server==0.7.2", "tensorflow-io-gcs-filesystem==0.37.1",
    "tensorflow_cpu==2.19.0", "termcolor==3.3.0", "tf_keras==2.19.0", "tqdm==4.70.1",
    "typing_extensions==4.16.0", "urllib3==2.8.0", "Werkzeug==3.1.9", "wrapt==2.5.2",
)
STAMP = ".edgepart-complete"
LOCK_WAIT_S = 1800.0  # another process building the environment: wait for it at most this long
PIP_TIMEOUT_S = 3600.0


def cache_root() -> Path:
    """Where edgepart keeps what it makes once per machine: $EDGEPART_CACHE, else ~/.cache/edgepart."""
    env = os.environ.get("EDGEPART_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgepart"


def env_dir() -> Path:
    """The converter environment's folder (it may not exist yet)."""
    return cache_root() / f"onnx2tf-{ONNX2TF_VERSION}"


def _bin(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def _stamp_text() -> str:
    """What the stamp holds: the pins and the Python, so a changed pin list rebuilds the environment."""
    h = hashlib.sha256("\n".join(PINNED).encode()).hexdigest()
    return f"{h} python{sys.version_info.major}.{sys.version_info.minor}\n"


def is_ready(env: Path | None = None) -> bool:
    """True where the environment was built completely with today's pins."""
    env = env or env_dir()
    stamp = env / STAMP
    try:
        return stamp.read_text() == _stamp_text() and _bin(env, "python").exists()
    except OSError:
        return False


def converter_env(progress: Callable[[str], None] | None = None) -> Path:
    """The converter environment's folder, built first where it is missing or half-built."""
    env = env_dir()
    if is_ready(env):
        return env
    env.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env.parent / f"{env.name}.lock"
    with open(lock_path, "a+") as lock:
        _lock(lock, lock_path)
        try:
            if not is_ready(env):  # another process may have built it while we waited
                _build(env, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return env


def _lock(f, path: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ConversionError(
                    f"Another process has been creating the TFLite converter environment for over "
                    f"{LOCK_WAIT_S:.0f} s (it holds {path}). If none is running, delete {path} and try again."
                ) from None
            time.sleep(1.0)


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)
    log.warning(msg)  # a one-time wait of minutes: worth seeing without -v


def _build(env: Path, progress: Callable[[str], None] | None) -> None:
    log_path = env.parent / f"{env.name}.log"
    _say(progress, f"creating the TFLite converter environment (onnx2tf {ONNX2TF_VERSION}, TensorFlow), one time: "
                   f"~{DOWNLOAD_MB} MB download, ~{INSTALLED_MB} MB on disk, a few minutes; in {env}")
    if env.exists():
        shutil.rmtree(env)  # a half-built folder (no stamp): start again
    t0 = time.monotonic()
    req = env.parent / f"{env.name}.requirements.txt"
    req.write_text("\n".join(PINNED) + "\n")
    py = str(_bin(env, "python"))
    steps = [
        ("python -m venv", [sys.executable, "-m", "venv", str(env)]),
        ("pip install", [py, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "--no-input", "-r", str(req)]),
        # the converter imports (TensorFlow included): a broken wheel fails here, not in the first conversion
        ("import onnx2tf", [py, "-c", "import onnx2tf, tensorflow, onnxsim"]),
    ]
    with open(log_path, "w") as out:
        for label, cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=PIP_TIMEOUT_S, env={**os.environ, "PIP_NO_INPUT": "1"}).returncode
            except subprocess.TimeoutExpired:
                rc = -1
                out.write(f"timed out after {PIP_TIMEOUT_S:.0f} s\n")
            if rc != 0:
                out.close()
                tail = _tail(log_path)
                raise ConversionError(
                    f"Creating the TFLite converter environment failed ({label}: exit "
                    f"status {rc}); the log is {log_path}. Its last lines:\n{tail}\nCheck the network to PyPI and the free "
                    f"disk space under {env.parent}, then package again (the environment is rebuilt from scratch)."
                )
    (env / STAMP).write_text(_stamp_text())  # last: its presence means the whole build succeeded
    _say(progress, f"TFLite converter environment ready in {time.monotonic() - t0:.0f} s ({env})")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  " + s for s in text[-lines:])


def driver_command(env: Path, job: Path) -> list[str]:
    """The converter's command line in that environment: _driver.py (onnx2tf, then TensorFlow's
    TFLite converter) on a job file. -I: nothing from the caller's environment or this folder."""
    return [str(_bin(env, "python")), "-I", str(Path(__file__).with_name("_driver.py")), str(job)]


def converter_environ(env: Path) -> dict[str, str]:
    """The converter process's environment: its own bin first (onnx2tf runs `onnxsim` from PATH), no
    GPU, and every proxy pointed at a closed port, so that nothing it tries to fetch leaves the
    machine (the sample images it would download are given to it instead; docs/tflite.md)."""
    e = {k: v for k, v in os.environ.items() if k.upper() not in ("NO_PROXY", "PYTHONPATH", "PYTHONHOME")}
    closed = "http://127.0.0.1:9"
    e.update({
        "PATH": f"{_bin(env, 'python').parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(env),
        "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
        "ALL_PROXY": closed, "all_proxy": closed,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONNOUSERSITE": "1",
    })
    return e
