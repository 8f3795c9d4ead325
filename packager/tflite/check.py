"""Check a TFLite step against its ONNX original (docs/tflite.md, "The check").

The ONNX step runs on onnxruntime, the TFLite step on edgepart's own runner (edgepart.litert, what
the agent runs), both fed the plan's layout: the check covers the conversion and the perms at the
step's edge together. What either runtime raises while loading or running the step (LiteRT's
RuntimeError and ValueError, onnxruntime's own error classes) is a ConversionError naming the step,
so `--format auto` keeps such a step ONNX (docs/tflite.md, "What fails, and how").
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgepart.errors import BundleError, ConversionError
from edgepart.plan import TensorIO


def runtime_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime and LiteRT raise where a step does not load or run: RuntimeError and
    ValueError (LiteRT, onnxruntime's Python layer), onnxruntime's own error classes (which derive
    from Exception only), and BundleError (edgepart's runners refusing a file)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort

    own = tuple(v for v in vars(ort).values()
                if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == ort.__name__)
    return (RuntimeError, ValueError, BundleError, *own)


def runtime_failure(step: str, doing: str, e: BaseException) -> ConversionError:
    """The ConversionError for a runtime's error while `doing` something with the step: its message
    on one line (`--format auto` says a stayed step's first line)."""
    what = " ".join(str(e).split())
    if len(what) > 400:
        what = what[:400] + " ..."
    return ConversionError(f"Step {step}: {doing} failed ({type(e).__name__}: {what}). Run this step on onnxruntime, "
                           f"or package again.", step=step)


def check_step(onnx_path: Path | str, tflite_path: Path | str, io: Sequence[TensorIO],
               samples: Sequence[Mapping[str, np.ndarray]], tolerance: float, *, step: str | None = None) -> float:
    """The largest absolute difference between the two steps' outputs over `samples`; ConversionError
    naming the step, the tensor and the difference where it is over `tolerance`."""
    from edgepart.litert import make_tflite_session
    from edgepart.runtime import make_session

    step = step or Path(onnx_path).stem
    errors = runtime_errors()
    try:
        ref = make_session(onnx_path, threads=1)
        names = [o.name for o in ref.get_outputs()]
    except errors as e:
        raise runtime_failure(step, "loading the ONNX step on onnxruntime", e) from None
    try:
        tfl = make_tflite_session(tflite_path, tuple(io), threads=1)
    except errors as e:
        raise runtime_failure(step, "loading the TFLite step on LiteRT", e) from None
    worst, where = 0.0, ""
    for i, feeds in enumerate(samples):
        try:
            want = ref.run(names, dict(feeds))
        except errors as e:
            raise runtime_failure(step, f"running the ONNX step on onnxruntime (sample {i})", e) from None
        try:
            got = tfl.run(names, dict(feeds))
        except errors as e:
            raise runtime_failure(step, f"running the TFLite step on LiteRT (sample {i})", e) from None
        for n, a, b in zip(names, want, got):
            if a.shape != b.shape:
                raise ConversionError(f"Step {step}: the TFLite step gives {n!r} the shape {b.shape}, the ONNX step "
                                      f"{a.shape} (sample {i}). Package again, or run this step on onnxruntime.",
                                      step=step)
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            if not np.isfinite(d) or d > worst:  # NaN on one side only: as bad as it gets
                worst, where = (d if np.isfinite(d) else float("inf")), f"{n!r} (sample {i})"
    if worst > tolerance:
        raise ConversionError(f"Step {step}: its TFLite twin differs from the ONNX step by {worst:.3g} at {where}, "
                              f"over the tolerance {tolerance:g}. Convert it at a higher precision, or run it on "
                              f"onnxruntime.", step=step)
    return worst
