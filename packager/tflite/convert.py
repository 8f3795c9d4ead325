"""Convert one step (an ONNX sub-model) to TFLite with onnx2tf (docs/tflite.md, "Conversion").

The step is first made easy to convert: its inputs and outputs renamed `x0, x1, ...` and
`y0, y1, ...` (the TFLite signature's keys then follow from the ONNX order, whatever characters the
plan's names hold), symbolic dimensions fixed (by the first calibration sample, else 1) and shapes
inferred again. onnx2tf then runs in its own environment (env.py), as a subprocess with a deadline,
and never reaches the network: the sample images it would download are written into its working
folder first, and its proxies point at a closed port. It checks the transpositions it chooses on
seeded random test inputs (`_test_data`) instead of its own all-ones inputs, on which a padding
mask hides a wrong choice (docs/tflite.md, "Transformers: the padding mask").

onnx2tf turns NCHW into NHWC. The plan's tensors keep the ONNX layout on the wire, so each tensor's
`perm` (tflite = onnx.transpose(perm)) is found here: the layouts the shapes allow (the same, or
channels last), then the one combination whose TFLite outputs match onnxruntime's on a random sample.
A shape like 1x8x8x8 allows both; the numbers decide, never a guess.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from edgepart.errors import BundleError, ConversionError
from edgepart.plan import TensorIO

from . import env as _env
from .check import runtime_errors, runtime_failure

log = logging.getLogger("edgepart")

PRECISIONS = ("float32", "float16", "int8")
# what onnx2tf reads from its working folder instead of downloading it (onnx2tf's
# download_test_image_data): 20 images, 128x128 RGB, NHWC, in [0, 1)
_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
# how close the TFLite outputs must be, relative to the outputs' range, for a layout to count as
# matching when the perms are decided (a wrong layout is off by the order of the range itself)
_LAYOUT_RTOL = {"float32": 1e-3, "float16": 2e-2, "int8": 0.25}
_MAX_LAYOUTS = 64


def convert_step(onnx_path: Path | str, out_dir: Path | str, *, precision: str = "float32",
                 calibration: Mapping[str, np.ndarray] | None = None, timeout_s: float = 600.0,
                 step: str | None = None, progress: Callable[[str], None] | None = None
                 ) -> tuple[Path, tuple[TensorIO, ...]]:
    """Convert one ONNX step to `out_dir/<stem>.tflite`; return its path and the `io` that maps each
    ONNX input, then output, to its TFLite signature key and layout perm. `calibration`: arrays by
    input name, a batch of samples along axis 0 for int8 (and the first sample fixes symbolic
    dimensions). Raises ConversionError naming the step, and the operator that stopped onnx2tf."""
    onnx_path, out_dir = Path(onnx_path).resolve(), Path(out_dir).resolve()  # onnx2tf runs in its own folder
    step = step or onnx_path.stem
    if precision not in PRECISIONS:
        raise ConversionError(f"Unknown TFLite precision {precision!r} for step {step}; use one of "
                              f"{', '.join(PRECISIONS)}.", step=step)
    model = onnx.load(str(onnx_path))
    in_names = [i.name for i in model.graph.input]
    out_names = [o.name for o in model.graph.output]
    shapes = _input_shapes(model, calibration, step)
    if precision == "int8" and not calibration:
        raise ConversionError(f"int8 conversion of step {step} needs calibration samples (a batch of real "
                              f"inputs for {', '.join(in_names)}); give them, or convert to float16.", step=step)
    env = _env.converter_env(progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{step}-onnx2tf-", dir=out_dir) as tmp:
        work = Path(tmp)
        prepared = work / "step.onnx"
        ready = _prepare(model, shapes)
        np.save(work / _SAMPLE_FILE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        job = {"onnx": str(prepared), "work": str(work / "out"), "out": str(work / "step.tflite"),
               "precision": precision, "calibration": {}, "test_data": {}}
        if precision == "int8":
            dims = _dims(model)
            for i, name in enumerate(in_names):
                data = np.asarray(calibration[name], dtype=np.float32)
                # one sample per row of the file: a batch axis cut into samples of batch 1, a tensor
                # without one (a fixed batch of 2, a 0-d tensor) as the one sample it is
                rows = data[:, None] if _batch_axis(dims[name]) and data.ndim == len(dims[name]) else data[None]
                perm = _channels_last(rows.ndim - 1)  # onnx2tf's layout for the input (docs/tflite.md, "Precisions")
                np.save(work / f"calib{i}.npy", rows.transpose((0, *(a + 1 for a in perm))) if perm else rows)
                job["calibration"][f"x{i}"] = str(work / f"calib{i}.npy")
        # what onnx2tf checks its layout choices on, instead of its all-ones inputs (_test_data)
        for i, x in enumerate(_test_data(model, shapes)):
            np.save(work / f"test{i}.npy", x)
            job["test_data"][f"x{i}"] = str(work / f"test{i}.npy")
        # the log stays beside the step's file only where the conversion fails (_failure)
        log_path = work / f"{onnx_path.stem}.onnx2tf.log"
        produced = Path(job["out"])
        # onnxsim (onnx2tf's first pass) folds an output that is constant once the shapes are fixed
        # and onnx2tf then drops it; without onnxsim it keeps constant outputs
        for use_onnxsim in (True, False):
            for test_data in (job["test_data"], {}):
                shutil.rmtree(work / "out", ignore_errors=True)
                produced.unlink(missing_ok=True)
                onnx.save(ready, str(prepared))  # again: onnx2tf writes its simplified model over its input
                (work / "job.json").write_text(json.dumps({**job, "use_onnxsim": use_onnxsim, "test_data": test_data}))
                try:
                    _run(_env.driver_command(env, work / "job.json"), work, env, log_path, timeout_s, step, model)
                    break
                except ConversionError as e:
                    if not test_data or "longer than" in str(e):
                        raise
                # onnx2tf failed on that test data: once more with its own (ones), as before it
                (out_dir / log_path.name).unlink(missing_ok=True)
                log.info("onnx2tf failed on %s with random test inputs; converting again with its own", step)
            if not produced.is_file():
                raise _failure(step, log_path, "the converter finished but wrote no TFLite file")
            if len(_tflite_shapes(produced)[1]) >= len(out_names):
                break
            log.info("onnx2tf dropped a constant output of %s; converting again without onnxsim", step)
        tflite = out_dir / f"{onnx_path.stem}.tflite"
        shutil.move(str(produced), tflite)
    log.info("converted %s to TFLite (%s) in %.1f s", step, precision, time.monotonic() - t0)
    try:
        io = find_io(onnx_path, tflite, in_names, out_names, shapes, precision, step, calibration)
    except runtime_errors() as e:  # LiteRT or onnxruntime refusing to run the step on the sample
        raise runtime_failure(step, "running the converted file to find its layouts", e) from None
    return tflite, io


# -- preparing the step ------------------------------------------------------------------------------

def _dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each input's dimensions, None where symbolic."""
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input}


def _batch_axis(dims: Sequence[int | None]) -> bool:
    """Whether an input's first axis is a batch, along which calibration data holds samples: symbolic,
    or 1. A fixed size above 1 is part of the tensor, and a 0-d input has no axis to cut."""
    return bool(dims) and dims[0] in (None, 1)


def _input_shapes(model: onnx.ModelProto, calibration: Mapping[str, np.ndarray] | None,
                  step: str) -> dict[str, tuple[int, ...]]:
    """Every input's concrete shape: the first calibration sample's where given (its batch axis cut to
    1, `_batch_axis`), else symbolic dims as 1."""
    shapes = {}
    all_dims = _dims(model)
    for i in model.graph.input:
        dims = all_dims[i.name]
        if calibration is not None and i.name in calibration:
            sample = np.asarray(calibration[i.name])
            got = (1, *sample.shape[1:]) if _batch_axis(dims) and sample.ndim == len(dims) else sample.shape
            if len(got) != len(dims) or any(d is not None and d != g for d, g in zip(dims, got)):
                raise ConversionError(f"The calibration sample for {i.name!r} of step {step} has shape "
                                      f"{sample.shape}, the step takes {dims}.", step=step)
            shapes[i.name] = tuple(int(g) if d is None else d for d, g in zip(dims, got))
        else:
            shapes[i.name] = tuple(1 if d is None else d for d in dims)
    return shapes


def _prepare(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy with inputs x0.., outputs y0.., static input shapes, and shapes inferred from them."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    new = {f"x{i}" for i in range(len(g.input))} | {f"y{j}" for j in range(len(g.output))}
    edge = {t.name for t in (*g.input, *g.output)}
    inner = {x for n in g.node for x in (*n.input, *n.output)} | {t.name for t in g.initializer}
    rename = {x: f"{x}_inner" for x in inner & new if x not in edge}  # a tensor inside already named x0
    rename |= {t.name: f"x{i}" for i, t in enumerate(g.input)}
    produced = {o for n in g.node for o in n.output}
    for j, t in enumerate(g.output):
        if t.name not in produced or t.name in rename:  # an input or constant passed straight through
            g.node.append(onnx.helper.make_node("Identity", [t.name], [f"y{j}_"]))
            rename[f"y{j}_"] = f"y{j}"
        else:
            rename[t.name] = f"y{j}"
        t.name = f"y{j}"
        t.type.tensor_type.ClearField("shape")
    _rename(g, rename)
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    for t, orig in zip(g.input, model.graph.input):
        t.name = rename[orig.name]
        for d, v in zip(t.type.tensor_type.shape.dim, shapes[orig.name]):
            d.Clear()
            d.dim_value = int(v)
    del g.value_info[:]  # symbolic shapes from the whole model: inferred again from the static inputs
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - onnx2tf infers what it can itself
        return m


def _rename(g: onnx.GraphProto, rename: Mapping[str, str]) -> None:
    for n in g.node:
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
        for a in n.attribute:  # subgraphs (If, Loop, Scan) read outer tensors by name
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _rename(sub, rename)


def _test_data(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> list[np.ndarray]:
    """One seeded random input per step input (x0, x1, ...), in the layout onnx2tf gives it (channels
    last for rank 3 to 5), for onnx2tf to check its layout choices on.

    onnx2tf decides some transpositions by running the ONNX step and its own graph so far on test
    inputs and keeping the permutation that agrees best; its own test inputs are all ones, on which a
    padding mask is all ones too, so that every transposition of the mask agrees (MiniLM at 12
    tokens = 12 heads, docs/tflite.md). Random values tell the transpositions apart: floats uniform in
    [0, 1), booleans and integer tensors random 0s and 1s (ids, masks and indices valid for any axis),
    0-d integers 1 (a count). An input whose shape reads the same in both layouts (1x8x8x8) keeps
    onnx2tf's ones: onnx2tf would read the data in one layout for ONNX and in the other for itself."""
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    rng = np.random.default_rng(0)
    out = []
    for i in model.graph.input:
        shape, dtype = tuple(shapes[i.name]), np.dtype(types[i.name])
        perm = _channels_last(len(shape))
        if perm and _permuted(shape, perm) == shape:
            x = np.ones(shape, dtype)
        elif np.issubdtype(dtype, np.floating):
            x = rng.random(shape).astype(dtype)
        elif dtype == np.bool_:
            x = rng.random(shape) < 0.5
        else:
            x = rng.integers(0, 2, shape).astype(dtype) if shape else np.ones(shape, dtype)
        out.append(np.ascontiguousarray(x.transpose(perm) if perm else x))
    return out


def _channels_last(rank: int) -> tuple[int, ...]:
    """onnx2tf's layout for a rank-3..5 tensor (NCW -> NWC, NCHW -> NHWC, NCDHW -> NDHWC); () else."""
    return (0, *range(2, rank), 1) if 3 <= rank <= 5 else ()


# -- running onnx2tf -----------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, env: Path, log_path: Path, timeout_s: float, step: str,
         model: onnx.ModelProto) -> None:
    with open(log_path, "w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        # its own session, so its own process group: TensorFlow's helpers go with it when it is killed
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_env.converter_environ(env), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise _failure(step, log_path, f"onnx2tf took longer than {timeout_s:.0f} s and was stopped",
                           model) from None
        except BaseException:  # Ctrl-C (KeyboardInterrupt), SystemExit, ...: no converter left running
            _kill_group(proc)
            raise
    if rc != 0:
        raise _failure(step, log_path, f"onnx2tf failed (exit status {rc})", model)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the converter's process group (its session) and reap it; the group may be gone already."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


_OP_LINE = re.compile(r"onnx_op_type: (\S+)\s+onnx_op_name: (\S+)")  # onnx2tf's line per operator
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failed_operator(log_text: str, model: onnx.ModelProto | None = None) -> tuple[str, str]:
    """The ONNX operator (type, node name) that stopped onnx2tf, from its log (and the step's model,
    where the log names only the node); ("", "") where it did not stop at one (it failed before the
    graph, or in TensorFlow's TFLite converter)."""
    text = _ANSI.sub("", log_text)
    m = re.search(r"(\w+) OP is not yet implemented|No module named 'onnx2tf\.ops\.(\w+)'", text)
    if m:
        return (m.group(1) or m.group(2)), ""
    # TensorFlow's TFLite converter: a TF operator with no TFLite builtin (named as in ONNX, mostly)
    m = re.search(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)
    if m:
        return m.group(1), ""
    err = re.search(r"ERROR: onnx_op_name: (\S+)", text)
    if not err:
        return "", ""
    node = re.sub(r"^wa/", "/", err.group(1))  # onnx2tf's spelling of a name that starts with "/"
    types = {n.name: n.op_type for n in model.graph.node} if model is not None else {}
    if node in types:
        return types[node], node
    last = None
    for last in _OP_LINE.finditer(text, 0, err.start()):
        pass
    return (last.group(1), last.group(2)) if last else ("", node)


def _failure(step: str, log_path: Path, what: str, model: onnx.ModelProto | None = None) -> ConversionError:
    """The error for a failed conversion; the log is moved out of the working folder, beside it."""
    try:
        text = log_path.read_text(errors="replace")
        log_path = Path(shutil.move(str(log_path), log_path.parent.parent / log_path.name))
    except OSError:
        text = ""
    op, node = failed_operator(text, model)
    # the log's own lines, not the frames of a traceback inside onnx2tf or TensorFlow (those stay in the log)
    # (nor TensorFlow's MLIR dump: its lines are locations, operations and the function's braces)
    lines = [s.strip() for s in _ANSI.sub("", text).splitlines()
             if s.strip() and not s[:1].isspace() and not s.startswith(("Traceback", "loc(", '"func.', "%", "}", "<unknown>"))][-3:]
    at = (f" at the ONNX operator {op} (node {node})" if op and node else f" at the ONNX operator {op}" if op
          else f" at the node {node}" if node else "")
    return ConversionError(
        f"Step {step} does not convert to TFLite: {what}{at}. The converter's log is {log_path}; it ends: "
        + " | ".join(s[:300] for s in lines) + ". Run this step on onnxruntime instead"
        + (f", or change the model so that it has no {op}." if op else "."),
        step=step, operator=op)


# -- the layouts at the step's edge --------------------------------------------------------------------

def find_io(onnx_path: Path, tflite: Path, in_names: Sequence[str], out_names: Sequence[str],
            shapes: Mapping[str, tuple[int, ...]], precision: str, step: str,
            calibration: Mapping[str, np.ndarray] | None = None) -> tuple[TensorIO, ...]:
    """Each ONNX input and output with its TFLite key and perm (the module docstring). Inputs keep
    their keys (x0, x1, ... are the signature's input names); outputs are matched by their values,
    since onnx2tf names its outputs in order and drops any that became a constant, which shifts the
    names of the rest."""
    from edgepart.litert import make_tflite_session
    from edgepart.runtime import make_session

    in_keys = {n: f"x{i}" for i, n in enumerate(in_names)}
    try:
        tfl_in, tfl_out = _tflite_shapes(tflite)
        make_tflite_session(tflite, [TensorIO(k, k) for k in [*tfl_in, *tfl_out]], threads=1)
    except (BundleError, ValueError, RuntimeError) as e:
        raise ConversionError(f"Step {step}: the converted file does not load on LiteRT ({e}). Run this step on "
                              f"onnxruntime.", step=step) from None
    feeds = _sample(onnx_path, in_names, shapes, calibration)
    ref = dict(zip(out_names, make_session(onnx_path, threads=1).run(list(out_names), feeds)))
    in_options = {}
    for n in in_names:
        got = tfl_in.get(in_keys[n])
        if got is None:
            raise ConversionError(f"The TFLite file of step {step} has no input {in_keys[n]} for {n!r}.", step=step)
        in_options[n] = _layouts(feeds[n].shape, got)
        if not in_options[n]:
            raise ConversionError(f"Step {step}: the TFLite input {in_keys[n]} for {n!r} has shape {got}, neither "
                                  f"the ONNX shape {feeds[n].shape} nor it channels-last.", step=step)
    best: tuple[float, dict[str, tuple[int, ...]], dict[str, tuple[str, tuple[int, ...]]]] | None = None
    for combo in list(itertools.product(*(in_options[n] for n in in_names)))[:_MAX_LAYOUTS]:
        perms = dict(zip(in_names, combo))
        io = [TensorIO(n, in_keys[n], perms[n]) for n in in_names] + [TensorIO(k, k) for k in tfl_out]
        outs = dict(zip(tfl_out, make_tflite_session(tflite, io, threads=1).run(list(tfl_out), feeds)))
        worst, match = _match_outputs(ref, outs, step)
        if best is None or worst < best[0]:
            best = (worst, perms, match)
    assert best is not None
    worst, perms, match = best
    got_types = _tflite_types(tflite)
    for n, r in ref.items():  # the runner cannot cast outputs back: the plan's dtype must come out
        if got_types[match[n][0]] != r.dtype:
            raise ConversionError(f"Step {step}: TFLite gives {n!r} as {got_types[match[n][0]]}, the ONNX step as "
                                  f"{r.dtype}. Run this step on onnxruntime.", step=step)
    if worst > _LAYOUT_RTOL[precision]:
        raise ConversionError(f"Step {step}: the TFLite file's outputs match onnxruntime's in no layout (relative "
                              f"error {worst:.3g} at best); onnx2tf converted it wrongly. Run this step on "
                              f"onnxruntime.", step=step)
    return tuple([TensorIO(n, in_keys[n], perms[n]) for n in in_names]
                 + [TensorIO(n, *match[n]) for n in out_names])


def _layouts(onnx_shape: Sequence[int], tflite_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The perms onnx2tf may have applied that turn `onnx_shape` into `tflite_shape`: channels last
    (its default), the same layout, or both where the shape cannot tell them apart."""
    return [p for p in dict.fromkeys([_channels_last(len(onnx_shape)), ()])
            if _permuted(tuple(onnx_shape), p) == tuple(tflite_shape)]


def _match_outputs(ref: Mapping[str, np.ndarray], outs: Mapping[str, np.ndarray], step: str
                   ) -> tuple[float, dict[str, tuple[str, tuple[int, ...]]]]:
    """Each ONNX output's TFLite key and perm, by the smallest difference (a key named like the
    output wins a tie); the worst relative error of the matches."""
    missing = len(ref) - len(outs)
    scored = sorted((_rel_err(r, y, p), k != n, n, k, p) for n, r in ref.items() for k, y in outs.items()
                    for p in _layouts(r.shape, y.shape))
    match: dict[str, tuple[str, tuple[int, ...]]] = {}
    used: set[str] = set()
    worst = 0.0
    for err, _, n, k, p in scored:
        if n not in match and k not in used:
            match[n], worst = (k, p), max(worst, err)
            used.add(k)
    unmatched = [n for n in ref if n not in match]
    if unmatched:
        why = (f"onnx2tf dropped {missing} output(s), which become constants once the step's shapes are fixed "
               f"(a batch size read from a shape, say)" if missing > 0 else "no TFLite output has its shape")
        raise ConversionError(f"Step {step}: the TFLite file has no output for {unmatched}: {why}. Run this step "
                              f"on onnxruntime, or cut the model so that no constant crosses the cut.", step=step)
    return worst, match


def _permuted(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[a] for a in perm) if perm else tuple(shape)


def _rel_err(ref: np.ndarray, tfl: np.ndarray, perm: tuple[int, ...]) -> float:
    """The largest difference between ONNX's `ref` (moved into TFLite's layout by perm) and TFLite's
    output, relative to the range of `ref`."""
    r = ref.transpose(perm) if perm else ref
    if r.shape != tfl.shape:
        return float("inf")
    r64, t64 = r.astype(np.float64), tfl.astype(np.float64)
    scale = float(np.max(np.abs(r64))) if r64.size else 0.0
    return float(np.max(np.abs(r64 - t64))) / max(scale, 1e-12) if r64.size else 0.0


def _tflite_shapes(tflite: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The signature's inputs and outputs, by key, with their shapes."""
    from edgepart.litert import _interpreter_class

    runner = _interpreter_class()(model_path=str(tflite)).get_signature_runner()
    return tuple({k: tuple(int(s) for s in v["shape"]) for k, v in d.items()}  # type: ignore[return-value]
                 for d in (runner.get_input_details(), runner.get_output_details()))


def _tflite_types(tflite: Path) -> dict[str, np.dtype]:
    """The signature's outputs, by key, with their element types."""
    from edgepart.litert import _interpreter_class

    runner = _interpreter_class()(model_path=str(tflite)).get_signature_runner()
    return {k: np.dtype(v["dtype"]) for k, v in runner.get_output_details().items()}


def _sample(onnx_path: Path, in_names: Sequence[str], shapes: Mapping[str, tuple[int, ...]],
            calibration: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """One input per name: the first calibration sample, else random values of its type. Random, so
    no transposition of it looks like another (a constant or symmetric sample would hide a layout)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    dims = _dims(model)
    rng = np.random.default_rng(1234)
    feeds = {}
    for n in in_names:
        if calibration is not None and n in calibration:
            x = np.asarray(calibration[n])
            first = x[:1] if _batch_axis(dims[n]) and x.ndim == len(shapes[n]) else x
            feeds[n] = np.ascontiguousarray(first, dtype=types[n])
        elif np.issubdtype(types[n], np.floating):
            feeds[n] = rng.standard_normal(shapes[n]).astype(types[n])
        elif types[n] == np.bool_:
            feeds[n] = rng.random(shapes[n]) < 0.5
        else:  # integers: ones (a batch size, a count or an index that is valid for any axis of size > 1)
            feeds[n] = np.ones(shapes[n], dtype=types[n])
    return feeds
