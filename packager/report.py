"""The report of one `package` run (issue 4): what crosses between devices, per split layer and in
total (dense vs used), compute and weights per device, and how close the split's outputs stay to the
original model's on inputs it was not restructured on. One value, as JSON and as one HTML file.

    channel_report(res, graph, model_name, sparse=, fidelity=, ...)  -> PackageReport   (pure)
    pipeline_report(res, graph, model_name, fidelity=)                -> PackageReport   (pure)
    split_holdout(calib, fraction)      -> (fit, held): the last `fraction` of the samples held out
    measure_fidelity(dist, model, feeds, inputs) -> Fidelity: the bundles run chained (LocalCluster)
                                        against the original model; `inputs` says what they are
    report.to_dict(), report.summary(), report.write_html(path)

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
from edgepart.plan import CALLER

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
        split = "cuts" if self.strategy == "pipeline" else "split_layers"
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

    def write_html(self, path: Path | str) -> Path:
        """Write the report as one self-contained HTML file (tables and embedded PNG plots)."""
        from .report_html import render

        path = Path(path)
        check_writable(path)
        text = render(self)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise EdgepartError(f"Cannot write the report to {path} ({e.strerror or e}). "
                                f"Give a path in a folder you can write to with --report.") from None
        return path


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


# -- building it (pure) ---------------------------------------------------------------------------------

def channel_report(res, graph, model_name: str, sparse=None, fidelity: Fidelity | None = None,
                   restructured: Mapping[str, object] | None = None, replicated=None) -> PackageReport:
    """The report of a channel split (`package_channel`'s result); `sparse` is RePurpose's SparseReport;
    `replicated` a ReplicateReport, whose original dense split is the baseline then."""
    rep, plan = res.report, res.plan
    errs = {x.node: x for x in sparse.layers} if sparse is not None else {}
    base = dict(replicated.layer_dense) if replicated is not None else {}
    layers = tuple(
        LayerRow(x.node, x.input, base.get(x.node, x.dense_bytes), x.sent_bytes,  # what crosses: partial sums where cheaper
                 errs[x.node].error if x.node in errs else None,
                 errs[x.node].error_pruned if x.node in errs else None)
        for x in rep.layers.layers)
    macs, params = dict(rep.macs), dict(rep.param_bytes)
    devs = plan.device_names()
    rows = tuple(DeviceRow(d, int(macs.get(d, 0)), int(params.get(d, 0)), len(plan.steps_of(d)),
                           round(sum(s.estimated_ms for s in plan.steps_of(d)), 6)) for d in devs)
    codec = {(r.tensor, r.src, r.dst): r.codec.kind for r in plan.routes}
    routes = tuple(RouteRow(r.tensor, r.src, r.dst, codec.get((r.tensor, r.src, r.dst), "dense"), r.size_bytes,
                            r.channels) for r in rep.routes)
    names = rep.devices or devs
    decisions = tuple((n, op, d.kind, names[d.device] if 0 <= d.device < len(names) else "", d.note)
                      for n, op, d in rep.decisions)
    return PackageReport(model_name, "channel", plan.plan_id, devs, rep.latency_ms, rep.cross_device_bytes,
                         rep.caller_bytes, layers, rows, routes, int(graph.total_macs), int(graph.total_param_bytes),
                         decisions, tuple(rep.notes), fidelity, tuple((restructured or {}).items()),
                         totals=(dense_baseline(rep, sparse, replicated), rep.layers.sent_bytes))


def dense_baseline(rep, sparse=None, replicated=None) -> int:
    """What the dense channel split of the ORIGINAL model sends in its split layers: a restructured
    model's own dense split counts its added layers (lowrank) or its copies (replicate)."""
    if sparse is not None and getattr(sparse, "dense_bytes", None):
        return int(sparse.dense_bytes)
    if replicated is not None and replicated.dense_bytes:
        return int(replicated.dense_bytes)
    return int(rep.layers.dense_bytes)


def pipeline_report(res, graph, model_name: str, fidelity: Fidelity | None = None) -> PackageReport:
    """The report of a pipeline (`package.package`'s result): one row per cut, one per stage's device."""
    pp, plan = res.pipeline, res.plan
    layers = tuple(
        LayerRow(f"cut after stage{i} ({s.device}, node {s.stop - 1}: {graph.nodes[s.stop - 1].name})",
                 ", ".join(graph.crossing(s.stop)), s.send_bytes, s.send_bytes)
        for i, s in enumerate(pp.stages[:-1]))
    rows = tuple(DeviceRow(s.device, int(round(s.flops / 2)), int(s.param_bytes), 1, round(s.compute_ms, 6))
                 for s in pp.stages)
    routes = tuple(RouteRow(r.tensor, r.src, r.dst, r.codec.kind, int(graph.tensor_bytes.get(r.tensor, 0)))
                   for r in plan.routes)
    between = sum(r.size_bytes for r in routes if CALLER not in (r.src, r.dst))
    caller = sum(r.size_bytes for r in routes if CALLER in (r.src, r.dst))
    return PackageReport(model_name, "pipeline", plan.plan_id, tuple(s.device for s in pp.stages), pp.latency_ms,
                         between, caller, layers, rows, routes, int(graph.total_macs), int(graph.total_param_bytes),
                         fidelity=fidelity)


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
    import onnxruntime as ort

    from edgepart.runtime import make_session

    if isinstance(model, onnx.ModelProto):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
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
                exact = max(exact, _max_abs(v, got[k]))
        for k in names:
            a, b = np.asarray(want[k], np.float64), np.asarray(got[k], np.float64)
            diff[k] = max(diff[k], _max_abs(a, b))
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


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


__all__ = ["PackageReport", "LayerRow", "DeviceRow", "RouteRow", "Fidelity", "OutputFidelity", "channel_report",
           "pipeline_report", "split_holdout", "measure_fidelity", "check_writable"]
