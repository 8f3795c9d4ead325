"""onnxruntime sessions for steps: execution-provider choice and session creation.

The cluster lists each device's provider preference (CUDA or TensorRT on a Jetson, ACL/XNNPACK on
a phone or Pi, CPU elsewhere). At run time the agent takes the preferred providers this onnxruntime
build actually has, in the preferred order, and always ends with the CPU provider as a fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BundleError

log = logging.getLogger("edgepart")

CPU = "CPUExecutionProvider"


def choose_providers(preferred: Sequence[str], available: Iterable[str]) -> list[str]:
    """The preferred providers this build has, in order, with CPU last as the fallback."""
    have = set(available)
    chosen = [p for p in dict.fromkeys(preferred) if p in have and p != CPU]
    missing = [p for p in preferred if p not in have]
    if missing:
        log.info("execution providers not in this onnxruntime build, skipped: %s", ", ".join(missing))
    return chosen + [CPU]


def make_session(path: Path | str, providers: Sequence[str] = (CPU,), threads: int = 0):
    """An onnxruntime InferenceSession for one step file, with a clear error if it cannot load."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    chosen = choose_providers(providers, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as e:  # onnxruntime raises its own untyped errors
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"onnxruntime cannot load {path}: {msg}. The file may be corrupt or need a newer "
            f"onnxruntime; check `pip show onnxruntime` on this device."
        ) from None
