"""Each device's file format: after a strategy wrote ONNX bundles, convert the steps of the devices
that run TFLite (docs/tflite.md, "In the packager").

    --format onnx    every step stays ONNX (the default)
    --format tflite  every step becomes TFLite; a step that does not convert stops packaging
    --format auto    the devices whose cluster.yaml says `runtime: tflite` (or whose profile found
                     LiteRT faster: docs/profile.md) get TFLite steps; a step
                     that does not convert stays ONNX on that device, and the packager says which
                     operator stopped it

Strategy-free: it works on the written plan's steps, whatever made them. Every converted step is
checked against its ONNX original on the activations it will really see (the model's example
inputs run through the ONNX steps, or a seeded random input), and the wire keeps the plan's
layout: a step's `io` maps its tensors to the TFLite signature with the axes permutation at its
edge (edgepart.plan.TensorIO). Nothing changes in `dist/` until every conversion has passed, and
then no bundle is ever left with neither its ONNX step nor its TFLite one (`rewrite`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgepart.bundle import sha256_file
from edgepart.packager.seal import reseal
from edgepart.errors import ConversionError
from edgepart.plan import Plan, Step, TensorSpec
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


def batched(spec: TensorSpec) -> bool:
    """Whether a tensor's first axis is a batch of samples: its size is symbolic in the plan (a
    fixed size, 1 included, is part of the tensor; a 0-d tensor has no batch axis)."""
    return bool(spec.shape) and not (isinstance(spec.shape[0], int) and spec.shape[0] > 0)


def samples_in(plan: Plan, feeds: Mapping[str, np.ndarray] | None) -> int:
    """How many samples the model's example inputs hold: the shortest batch among the inputs that
    have a batch axis (1 where none has)."""
    sizes = [len(np.asarray(feeds[t.name])) for t in plan.inputs
             if feeds and t.name in feeds and batched(t) and np.ndim(feeds[t.name])]
    return max(1, min(sizes, default=1))


def wants_tflite(cluster, fmt: str) -> bool:
    """Whether `fmt` converts any step of a plan on `cluster` (known before planning)."""
    check_format(fmt)
    return fmt == "tflite" or (fmt == "auto" and any(getattr(d, "runtime", "onnx") == "tflite" for d in cluster.devices))


def step_activations(plan: Plan, dirs: Mapping[str, Path], feeds: Mapping[str, np.ndarray] | None,
                     seed: int = 0, sample: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of one request through the ONNX steps: sample `sample` of the model's example
    inputs (or a seeded random one) run step by step, in the order their inputs become available.
    Only an input with a batch axis (`batched`) is cut to that one sample; any other (a fixed batch
    of 2, no batch axis at all) is the same whole tensor in every sample."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for t in plan.inputs:
        if feeds and t.name in feeds:
            x = np.asarray(feeds[t.name])
            tensors[t.name] = x[sample:sample + 1] if batched(t) and x.ndim and len(x) > sample else x
            continue
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in t.shape]
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


def require_litert() -> None:
    """ConversionError, before any conversion, where this Python has no LiteRT: every converted step
    is checked on it, and a conversion takes minutes."""
    from edgepart.litert import litert_runtime

    if litert_runtime() is None:
        raise ConversionError('Converting steps to TFLite needs LiteRT in the packager\'s Python, to check each '
                              'converted step against its ONNX original, and neither ai-edge-litert nor '
                              'tflite-runtime imports. Install it with:  pip install "edgepart[litert]"  (or '
                              'package with --format onnx).')


def convert_bundles(plan: Plan, dirs: Mapping[str, Path], cluster, *, fmt: str = "onnx", precision: str = "float32",
                    feeds: Mapping[str, np.ndarray] | None = None,
                    progress: Callable[[str], None] | None = None) -> tuple[Plan, tuple[Converted, ...]]:
    """Convert the steps of the devices `fmt` picks to TFLite, check each, and rewrite every
    device's manifest for the new plan. Returns the new plan and what happened to each such step."""
    targets = tflite_devices(plan, cluster, fmt)
    check_format(fmt, precision)
    if not targets:
        return plan, ()
    require_litert()  # before minutes of conversion, not after them
    from edgepart.packager.tflite import check_step, convert_step, runtime_errors, runtime_failure

    acts = step_activations(plan, dirs, feeds)
    calib: dict[str, np.ndarray] = {}
    if precision == "int8":  # int8's ranges come from a batch of real samples where the user gave them
        n = min(16, samples_in(plan, feeds))
        more = [step_activations(plan, dirs, feeds, sample=i) for i in range(1, n)]
        specs = {t.name: t for st in plan.steps for t in st.inputs}
        # samples along the batch axis; a tensor without one is the same in every sample: once
        calib = {k: np.concatenate([v] + [m[k] for m in more]) if k in specs and batched(specs[k]) else v
                 for k, v in acts.items()}
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
                try:
                    tfl, io = convert_step(src, out_dir, precision=precision, step=st.name, progress=progress,
                                           calibration={k: calib[k] for k in sample} if calib else sample)
                    want = {o.name: acts[o.name] for o in st.outputs}
                    scale = max([1.0] + [float(np.max(np.abs(v))) for v in want.values() if np.size(v)])
                    diff = check_step(src, tfl, io, [sample], TOLERANCE[precision] * scale, step=st.name)
                except runtime_errors() as e:  # LiteRT or onnxruntime on the converted step: it does not convert
                    raise runtime_failure(st.name, "checking the converted step", e) from None
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
        rewrite(plan, new_plan, dirs, moves)
        return new_plan, tuple(results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def rewrite(old: Plan, new: Plan, dirs: Mapping[str, Path], moves: Sequence[tuple[Step, Path, Path]]) -> None:
    """Change dist/ from `old` to `new` once every check passed, in an order that never leaves a bundle
    with neither its ONNX step nor its TFLite one: the new files copied in, then every device's
    manifest written (the plan id changed), and only then the replaced ONNX files removed. A failure
    before the last part puts the bundles back as they were (ONNX) and is a ConversionError."""
    copied: list[Path] = []
    written: list[str] = []
    try:
        for st, tfl, target in moves:
            shutil.copy2(tfl, target)
            copied.append(target)
        for d, path in dirs.items():
            written.append(d)
            reseal({d: path}, new)
    except OSError as e:
        for d in written:  # the old manifests back: their files were never removed
            try:
                reseal({d: dirs[d]}, old)
            except OSError:
                log.warning("could not restore the manifest of %s", d)
        for target in copied:
            target.unlink(missing_ok=True)
        raise ConversionError(f"Writing the TFLite steps into the bundles failed ({e}); the bundles are left "
                              f"as they were (ONNX). Free the space or fix the permissions, and package again.") from None
    keep = {(st.device, f) for st in new.steps for f in st.files()}
    for st, _, _ in moves:
        for f in st.files():
            if (st.device, f) not in keep:
                try:
                    (dirs[st.device] / f).unlink(missing_ok=True)
                except OSError as e:  # a file left over, not a broken bundle
                    log.warning("could not remove %s of %s after converting it: %s", f, st.device, e)


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


__all__ = ["FORMATS", "PRECISIONS", "Converted", "batched", "check_format", "convert_bundles", "require_litert",
           "rewrite", "samples_in", "step_activations", "tflite_devices",
           "wants_tflite"]
