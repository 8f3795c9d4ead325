"""Each device's file format: after a strategy wrote ONNX bundles, convert the steps of the devices
that run TFLite (docs/tflite.md, "In the packager").

    --format onnx    every step stays ONNX (the default)
    --format tflite  every step becomes TFLite; a step that does not convert stops packaging
    --format auto    the devices whose cluster.yaml says `runtime: tflite` get TFLite steps; a step
                     that does not convert stays ONNX on that device, and the packager says which
                     operator stopped it

Strategy-free: it works on the written plan's steps, whatever made them. Every converted step is
checked against its ONNX original on the activations it will really see (the model's example
inputs run through the ONNX steps, or a seeded random input), and the wire keeps the plan's
layout: a step's `io` maps its tensors to the TFLite signature with the axes permutation at its
edge (edgepart.plan.TensorIO). Nothing changes in `dist/` until every conversion has passed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from edgepart.bundle import sha256_file, write_manifest
from edgepart.errors import ConversionError
from edgepart.plan import Plan
from edgepart.runtime import make_session

log = logging.getLogger("edgepart")

FORMATS = ("onnx", "tflite", "auto")
PRECISIONS = ("float32", "float16", "int8")
# the largest difference a converted step may show against its ONNX original, relative to the size
# of its outputs (at least 1): float32 must agree to rounding; float16 and int8 lose precision by design
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "int8": 1.5e-1}


@dataclass(frozen=True)
class Converted:
    """What happened to one step: its runtime now, and why a step meant for TFLite stayed ONNX."""

    step: str
    device: str
    runtime: str
    max_abs_diff: float | None = None
    reason: str = ""


def check_format(fmt: str, precision: str = "float32") -> None:
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r} is not a format: give onnx, tflite or auto.")
    if precision not in PRECISIONS:
        raise ConversionError(f"--tflite-precision {precision!r} is not a precision: give {', '.join(PRECISIONS)}.")


def tflite_devices(plan: Plan, cluster, fmt: str) -> set[str]:
    """The devices whose steps are to be TFLite under `fmt`."""
    check_format(fmt)
    if fmt == "onnx":
        return set()
    if fmt == "tflite":
        return set(plan.device_names())
    return {d.name for d in cluster.devices if getattr(d, "runtime", "onnx") == "tflite"}


def step_activations(plan: Plan, dirs: Mapping[str, Path], feeds: Mapping[str, np.ndarray] | None,
                     seed: int = 0, sample: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of one request through the ONNX steps: sample `sample` of the model's example
    inputs (or a seeded random one) run step by step, in the order their inputs become available."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for t in plan.inputs:
        if feeds and t.name in feeds:
            x = np.asarray(feeds[t.name])
            tensors[t.name] = x[sample:sample + 1] if x.ndim else x
            continue
        shape = [d if isinstance(d, int) else 1 for d in t.shape]
        tensors[t.name] = (rng.standard_normal(shape).astype(t.dtype) if t.dtype.startswith("float")
                           else np.zeros(shape, t.dtype))
    pending = list(plan.steps)
    while pending:
        st = next((s for s in pending if all(i.name in tensors for i in s.inputs)), None)
        if st is None:
            raise ConversionError("The plan's steps do not chain (a step waits for a tensor no step makes). "
                                  "Package the model again.")
        pending.remove(st)
        sess = make_session(dirs[st.device] / st.model_file, threads=1)
        outs = sess.run([o.name for o in st.outputs], {i.name: tensors[i.name] for i in st.inputs})
        tensors.update({o.name: v for o, v in zip(st.outputs, outs)})
    return tensors


def convert_bundles(plan: Plan, dirs: Mapping[str, Path], cluster, *, fmt: str = "onnx", precision: str = "float32",
                    feeds: Mapping[str, np.ndarray] | None = None,
                    progress: Callable[[str], None] | None = None) -> tuple[Plan, tuple[Converted, ...]]:
    """Convert the steps of the devices `fmt` picks to TFLite, check each, and rewrite every
    device's manifest for the new plan. Returns the new plan and what happened to each such step."""
    targets = tflite_devices(plan, cluster, fmt)
    check_format(fmt, precision)
    if not targets:
        return plan, ()
    from edgepart.packager.tflite import check_step, convert_step  # pulls the converter's environment

    acts = step_activations(plan, dirs, feeds)
    calib: dict[str, np.ndarray] = {}
    if precision == "int8":  # int8's ranges come from a batch of real samples where the user gave them
        n = min(16, min((len(np.asarray(v)) for v in (feeds or {}).values() if np.ndim(v)), default=1))
        more = [step_activations(plan, dirs, feeds, sample=i) for i in range(1, n)]
        calib = {k: np.concatenate([v] + [m[k] for m in more]) for k, v in acts.items()}
    staging = Path(tempfile.mkdtemp(prefix=".edgepart-tflite-", dir=Path(next(iter(dirs.values()))).parent))
    try:
        new_steps, results, moves = [], [], []
        for st in plan.steps:
            if st.device not in targets:
                new_steps.append(st)
                continue
            if progress:
                progress(f"converting {st.name} of {st.device} to TFLite ({precision})")
            src = dirs[st.device] / st.model_file
            sample = {i.name: acts[i.name] for i in st.inputs}
            try:
                out_dir = staging / st.device / st.name
                out_dir.mkdir(parents=True)
                tfl, io = convert_step(src, out_dir, precision=precision, step=st.name, progress=progress,
                                       calibration={k: calib[k] for k in sample} if calib else sample)
                want = {o.name: acts[o.name] for o in st.outputs}
                scale = max([1.0] + [float(np.max(np.abs(v))) for v in want.values() if np.size(v)])
                diff = check_step(src, tfl, io, [sample], TOLERANCE[precision] * scale, step=st.name)
            except ConversionError as e:
                e = _keep_log(e, staging, dirs[st.device])
                if fmt == "tflite":
                    raise ConversionError(
                        f"{st.name} (on {st.device}) does not convert to TFLite, so nothing was converted: the "
                        f"bundles stay ONNX. Package with --format auto (and `runtime: tflite` on the devices that "
                        f"want it) to keep such a step ONNX. {e}", step=st.name, operator=e.operator) from None
                why = f"operator {e.operator}" if e.operator else str(e).splitlines()[0][:200]
                log.warning("%s on %s stays ONNX: it does not convert to TFLite (%s)", st.name, st.device, why)
                if progress:
                    progress(f"{st.name} on {st.device} stays ONNX ({why})")
                results.append(Converted(st.name, st.device, "onnx", None, why))
                new_steps.append(st)
                continue
            name = f"{st.name}.tflite"
            moves.append((st, Path(tfl), dirs[st.device] / name))
            new_steps.append(dataclasses.replace(st, model_file=name, sha256=sha256_file(Path(tfl)), data_files=(),
                                                 runtime="tflite", io=tuple(io)))
            results.append(Converted(st.name, st.device, "tflite", diff))
        new_plan = dataclasses.replace(plan, steps=tuple(new_steps))
        # every check passed: now change dist/ (files first, then every device's manifest: the plan id changed)
        for st, tfl, target in moves:
            shutil.copy2(tfl, target)
            for f in st.files():
                (dirs[st.device] / f).unlink(missing_ok=True)
        for d, path in dirs.items():
            write_manifest(path, new_plan, d)
        return new_plan, tuple(results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _keep_log(e: ConversionError, staging: Path, bundle_dir: Path) -> ConversionError:
    """The converter's log out of the staging folder (removed at the end) into the device's bundle
    folder, and the error naming it there."""
    msg = str(e)
    for log in staging.rglob("*.onnx2tf.log"):
        if str(log) in msg:
            kept = bundle_dir / log.name
            shutil.copy2(log, kept)
            msg = msg.replace(str(log), str(kept))
    return ConversionError(msg, step=e.step, operator=e.operator)


__all__ = ["FORMATS", "PRECISIONS", "Converted", "check_format", "convert_bundles", "step_activations", "tflite_devices"]
