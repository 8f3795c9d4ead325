"""Check a TFLite step against its ONNX original (docs/tflite.md, "The check").

The ONNX step runs on onnxruntime, the TFLite step on edgepart's own runner (edgepart.litert, what
the agent runs), both fed the plan's layout: the check covers the conversion and the perms at the
step's edge together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgepart.errors import ConversionError
from edgepart.plan import TensorIO


def check_step(onnx_path: Path | str, tflite_path: Path | str, io: Sequence[TensorIO],
               samples: Sequence[Mapping[str, np.ndarray]], tolerance: float, *, step: str | None = None) -> float:
    """The largest absolute difference between the two steps' outputs over `samples`; ConversionError
    naming the step, the tensor and the difference where it is over `tolerance`."""
    from edgepart.litert import make_tflite_session
    from edgepart.runtime import make_session

    step = step or Path(onnx_path).stem
    ref = make_session(onnx_path, threads=1)
    names = [o.name for o in ref.get_outputs()]
    tfl = make_tflite_session(tflite_path, tuple(io), threads=1)
    worst, where = 0.0, ""
    for i, feeds in enumerate(samples):
        want = ref.run(names, dict(feeds))
        got = tfl.run(names, dict(feeds))
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
