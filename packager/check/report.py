"""The report of one `package` run (issue 4): what crosses between devices, per split layer and in
total (dense vs used), compute and weights per device, and how close the split's outputs stay to the
original model's on inputs it was not restructured on. One value, as JSON and as one HTML file.

    PackageReport                       built by each strategy (its `package(..., report=True)`)
    split_holdout(calib, fraction)      -> (fit, held): the last `fraction` of the samples held out
    measure_fidelity(dist, model, feeds, inputs) -> Fidelity: the bundles run chained (LocalCluster)
                                        against the original model; `inputs` says what they are
    report.to_dict(), report.summary(); report_html.write_html(report, path) writes the page

The HTML (report_html.py) needs nothing else: CSS inline, plots (matplotlib, Agg) as base64 PNG, no script.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from edgepart.errors import EdgepartError, InputsError

from edgepart.packager.check.verify import max_abs_diff

SCHEMA = 1


# -- values -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerRow:
    """One split layer (channel) or one cut (pipeline): bytes per inference crossing devices."""

    name: str
    tensor: str  # what crosses: the layer's input (channel), the tensors crossing the cut (pipeline)
    dense_bytes: int  # channel: every device receives every input channel it does not hold
    used_bytes: int  # channel: what crosses, the input channels its rows of W read or partial sums where fewer
    error: float | None = None  # RePurpose: relative output error ||y' - y|| / ||y|| after the refit
    error_pruned: float | None = None  # the same after pruning, before the refit

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.used_bytes if self.used_bytes else math.inf


@dataclass(frozen=True)
class DeviceRow:
    device: str
    macs: int  # multiply-accumulates per inference
    param_bytes: int  # weights it holds
    steps: int
    compute_ms: float  # its steps' estimated compute, at the cluster's speed


@dataclass(frozen=True)
class RouteRow:
    tensor: str
    src: str
    dst: str
    codec: str
    size_bytes: int  # per inference, at the planning shapes, before the codec
    channels: int | None = None  # a channel subset: how many channels


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    max_abs_diff: float
    mean_rel_error: float  # mean over samples of ||split - original|| / ||original||
    top1_agreement: float | None  # outputs shaped [N, C], C > 1: share of samples with the same argmax


@dataclass(frozen=True)
class Fidelity:
    """The split run from its bundles against the original model, on `inputs`."""

    inputs: str  # what was run, in words
    samples: int
    outputs: tuple[OutputFidelity, ...]
    rel_errors: tuple[float, ...] = field(default=(), repr=False)  # per sample, mean over outputs (plot only)
    exact_max_abs_diff: float | None = None  # the split vs the restructured model it was compiled from

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([o.mean_rel_error for o in self.outputs])) if self.outputs else 0.0

    @property
    def top1_agreement(self) -> float | None:
        return next((o.top1_agreement for o in self.outputs if o.top1_agreement is not None), None)

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "samples": self.samples, "max_abs_diff": _num(self.max_abs_diff),
                "mean_rel_error": _num(self.mean_rel_error), "top1_agreement": self.top1_agreement,
                "exact_max_abs_diff": _num(self.exact_max_abs_diff),
                "outputs": [{k: _num(v) if isinstance(v, float) else v for k, v in asdict(o).items()}
                            for o in self.outputs]}


@dataclass(frozen=True)
class PackageReport:
    """Everything a package run decided and measured, per inference at the planning shapes."""

    model: str
    strategy: str
    plan_id: str
    devices: tuple[str, ...]
    latency_ms: float  # estimated, from the cluster's speeds and links
    cross_device_bytes: int  # every route between two devices
    caller_bytes: int  # model inputs to the devices, outputs back
    layers: tuple[LayerRow, ...]
    device_rows: tuple[DeviceRow, ...]
    routes: tuple[RouteRow, ...]
    model_macs: int
    model_param_bytes: int
    decisions: tuple[tuple[str, str, str, str, str], ...] = ()  # node, op, kind, device, why
    notes: tuple[str, ...] = ()
    fidelity: Fidelity | None = None
    restructured: tuple[tuple[str, object], ...] = ()  # RePurpose's settings: method, comm_budget, samples...
    schema: int = SCHEMA
    # totals when layers share an input (attention's Q, K, V read one tensor, sent once): (dense, used)
    totals: tuple[int, int] | None = None
    # what a row of `layers` is: "split_layers" (a layer whose input crosses, with a dense baseline) or
    # "cuts" (a cut between stages, nothing to compare with): the strategy says, the report reads it
    rows_are: str = "split_layers"

    @property
    def dense_bytes(self) -> int:
        return self.totals[0] if self.totals else sum(x.dense_bytes for x in self.layers)

    @property
    def used_bytes(self) -> int:
        return self.totals[1] if self.totals else sum(x.used_bytes for x in self.layers)

    @property
    def ratio(self) -> float:
        """Split layers: dense channel split / used bytes (the figure issue 4 asks for)."""
        return self.dense_bytes / self.used_bytes if self.used_bytes else math.inf

    @property
    def dense_route_bytes(self) -> int:
        """All device-to-device routes if every split layer's input went dense (other routes as chosen)."""
        return self.cross_device_bytes - self.used_bytes + self.dense_bytes

    def summary(self) -> dict:
        split = self.rows_are
        routes_ratio = self.dense_route_bytes / self.cross_device_bytes if self.cross_device_bytes else math.inf
        return {
            "schema": self.schema, "model": self.model, "strategy": self.strategy, "plan_id": self.plan_id,
            "devices": list(self.devices), "latency_ms": self.latency_ms,
            "cross_device_bytes": self.cross_device_bytes, "caller_bytes": self.caller_bytes,
            split: {"count": len(self.layers), "dense_bytes": self.dense_bytes, "used_bytes": self.used_bytes,
                    "ratio": _num(self.ratio)},
            "dense_route_bytes": self.dense_route_bytes, "routes_ratio": _num(routes_ratio),
            "restructured": dict(self.restructured) or None,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d.update({
            "model_macs": self.model_macs, "model_param_bytes": self.model_param_bytes,
            "layers": [{**{k: _num(v) if isinstance(v, float) else v for k, v in asdict(x).items()},
                        "ratio": _num(x.ratio)} for x in self.layers],
            "device_rows": [asdict(x) for x in self.device_rows],
            "routes": [asdict(x) for x in self.routes],
            "decisions": [dict(zip(("node", "op", "kind", "device", "note"), x)) for x in self.decisions],
            "notes": list(self.notes),
        })
        return d


def _num(x: float | None) -> float | None:
    """JSON has no inf or nan: both become null."""
    return None if x is None or not math.isfinite(x) else float(x)


def check_writable(path: Path | str) -> None:
    """Fail early, before any work, when `path` cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise EdgepartError(f"The report path {path} is a folder. Give a file name, e.g. {path / 'report.html'}.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgepartError(f"Cannot write the report to {path}: {parent} is a file, not a folder. "
                            f"Give a path in a folder you can write to with --report.")
    if not os.access(parent, os.W_OK):
        raise EdgepartError(f"Cannot write the report to {path}: {parent} is not writable. "
                            f"Give a path in a folder you can write to with --report.")


# -- held-out inputs and fidelity ---------------------------------------------------------------------------

def split_holdout(calib: Mapping[str, np.ndarray], fraction: float) -> tuple[dict, dict]:
    """(fit, held): the last round(fraction x N) samples (at least one when fraction > 0) are held out."""
    if not 0.0 <= fraction < 1.0:
        raise InputsError(f"--holdout is the share of calibration samples kept for measuring, in [0, 1); got {fraction}.")
    counts = {k: len(np.asarray(v)) if np.ndim(v) else 0 for k, v in calib.items()}
    if len(set(counts.values())) > 1:
        raise InputsError(f"The calibration inputs hold different numbers of samples ({counts}); give each model "
                          f"input a batch [N, ...] of the same N.")
    n = next(iter(counts.values()), 0)
    held = 0 if fraction == 0 else max(1, int(round(n * fraction)))
    if n - held < 1:
        raise InputsError(f"The calibration inputs hold {n} sample(s), too few to hold out {fraction:.0%} and "
                          f"restructure on the rest. Give more samples, or --holdout 0 (fidelity is then measured "
                          f"on the calibration inputs themselves).")
    fit = {k: np.asarray(v)[: n - held] for k, v in calib.items()}
    out = {k: np.asarray(v)[n - held:] for k, v in calib.items()}
    return fit, out


def _session(model: onnx.ModelProto | Path | str):
    from edgepart.runtime import make_session

    from edgepart.packager.model import probe

    if isinstance(model, onnx.ModelProto):
        return probe.session(model, optimize=True)
    return make_session(model)


def _chunks(plan, feeds: Mapping[str, np.ndarray], batched: bool, chunk: int):
    if not batched:
        yield dict(feeds), 1
        return
    n = len(next(iter(feeds.values())))
    fixed = [s.shape[0] for s in plan.inputs if s.shape and isinstance(s.shape[0], int)]
    step = max(1, min(fixed)) if fixed else chunk  # a model with a fixed batch takes that many at a time
    for a in range(0, n, step):
        yield {k: v[a:a + step] for k, v in feeds.items()}, min(step, n - a)


def measure_fidelity(dist: Path | str, model: onnx.ModelProto | Path | str, feeds: Mapping[str, np.ndarray],
                     inputs: str, *, compiled: onnx.ModelProto | None = None, batched: bool = True,
                     chunk: int = 16) -> Fidelity:
    """Run the bundles in `dist` chained in this process (what the devices compute) and compare every
    output with `model`'s (the original). `batched`: axis 0 of every feed is the sample axis."""
    from edgepart.local import LocalCluster

    cluster = LocalCluster.from_dist(dist)
    names = [o.name for o in cluster.plan.outputs]
    ref = _session(model)
    comp = _session(compiled) if compiled is not None else None
    diff = {k: 0.0 for k in names}
    rels: dict[str, list[float]] = {k: [] for k in names}
    agree: dict[str, list[bool]] = {k: [] for k in names}
    exact = 0.0
    for part, rows in _chunks(cluster.plan, feeds, batched, chunk):
        try:
            want = dict(zip(names, ref.run(names, part)))
        except Exception as e:  # onnxruntime's errors are untyped
            raise InputsError(f"The original model cannot run on these inputs ({str(e).strip().splitlines()[0][:300]}). "
                              f"Give inputs it takes.") from None
        got = cluster.run(part)
        if comp is not None:
            for k, v in zip(names, comp.run(names, part)):
                exact = max(exact, max_abs_diff(v, got[k]))
        for k in names:
            a, b = np.asarray(want[k], np.float64), np.asarray(got[k], np.float64)
            diff[k] = max(diff[k], max_abs_diff(a, b))
            per = rows if batched and a.ndim and a.shape[0] == rows and a.shape == b.shape else 1
            a2, b2 = (a.reshape(per, -1), b.reshape(per, -1)) if a.shape == b.shape else (a.reshape(1, -1), None)
            for i in range(per):
                if b2 is None:
                    rels[k].append(math.inf)
                    continue
                norm = float(np.linalg.norm(a2[i]))
                rels[k].append(float(np.linalg.norm(a2[i] - b2[i])) / (norm if norm > 0 else 1.0))
            if a.ndim == 2 and a.shape[1] > 1 and a.shape == b.shape:
                agree[k].extend((a.argmax(1) == b.argmax(1)).tolist())
    outs = tuple(OutputFidelity(k, diff[k], float(np.mean(rels[k])) if rels[k] else 0.0,
                                float(np.mean(agree[k])) if agree[k] else None) for k in names)
    n = max((len(v) for v in rels.values()), default=0)
    per_sample = np.mean([rels[k] for k in names if len(rels[k]) == n], axis=0) if n else np.zeros(0)
    return Fidelity(inputs, len(per_sample), outs, tuple(float(x) for x in per_sample),
                    exact if compiled is not None else None)


def fidelity_without_calibration(out: Path | str, model: onnx.ModelProto | Path | str, plan, shapes: Mapping,
                                 feeds: Mapping) -> Fidelity:
    """Fidelity on the example inputs when given (--inputs), else on one random input (seed 0), each
    run as given (not per sample)."""
    from edgepart.inputs import check_feeds, random_inputs

    if feeds:
        check_feeds(plan.inputs, feeds)
        return measure_fidelity(out, model, feeds, "the --inputs", batched=False)
    return measure_fidelity(out, model, random_inputs(plan.inputs, dict(shapes), seed=0),
                            "one random input (standard normal, seed 0)", batched=False)


__all__ = ["PackageReport", "LayerRow", "DeviceRow", "RouteRow", "Fidelity", "OutputFidelity", "split_holdout",
           "measure_fidelity", "fidelity_without_calibration", "check_writable"]
