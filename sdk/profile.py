"""Device profiles: how fast this device really is, measured on the runtime it will use
(docs/profile.md).

`edgepart profile` runs on the device. It times the bundle's own steps (or a model, or without
either the representative set below) with the providers and thread budget the agent would use,
and onnxruntime's per-node profiler splits the time by operator kind:

    conv        a dense convolution (a kernel wider than 1x1, one group)
    depthwise   one group per channel: few multiply-accumulates per byte, memory-bound
    pointwise   a 1x1 convolution
    matmul      MatMul, Gemm (attention and fully connected layers)
    other       everything else (element-wise, pooling, normalisation): priced per output element

Each kind's speed is 2 x its multiply-accumulates / its time, the multiply-accumulates counted as
the packager's cost model counts them (the same `node_macs` serves both), so the planner can give
each node the time its kind takes on that device instead of one GFLOP/s figure for all: depthwise
convolutions and attention are not FLOP-bound. It also records the memory available and the round
trip and bandwidth to peers that are up (`--peer`).

The profile is a YAML file (schema below, `PROFILE_VERSION`) that cluster.yaml names per device
(`profile: pi-b.yaml`); the packager reads it (packager/cluster.py). Nothing here imports onnx: it
runs on a device's small install.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BundleError

log = logging.getLogger("edgepart")

PROFILE_VERSION = 1
KINDS = ("conv", "depthwise", "pointwise", "matmul", "other")

_CONV = ("Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger")
_MATMUL = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul")
_REDUCE = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax")
COMPUTE_KINDS = ("conv", "depthwise", "pointwise", "matmul")
# element-wise work that onnxruntime fuses into the convolution or product before it (and a Pad into
# the convolution after it): its time is in that node's kind, so the planner prices such a node at
# nothing on a profiled device (packager/model/graph.py marks it "fused")
FUSABLE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add", "BatchNormalization")


def op_kind(op_type: str, weight_shape: Sequence[int] | None = None, in_channels: int | None = None) -> str:
    """The kind of a node (see the module's doc) from its operator and, for a convolution, its
    weight's shape [M, C/group, kh, kw] and its input's channels C."""
    if op_type in _MATMUL:
        return "matmul"
    if op_type in _CONV and weight_shape is not None and len(weight_shape) >= 3:
        kernel = int(np.prod(weight_shape[2:]))
        if kernel == 1:
            return "pointwise"
        if weight_shape[1] == 1 and (in_channels is None or in_channels > 1):
            return "depthwise"
        return "conv"
    return "other"


def node_macs(op_type: str, in_shapes: Sequence[Sequence[int] | None], out_shape: Sequence[int] | None) -> int:
    """Multiply-accumulates of one node as the cost model counts them: a convolution's output
    elements x its weight's fan-in, a matrix product's output elements x its inner size, one per
    output element for everything else."""
    out = int(np.prod(out_shape)) if out_shape is not None else 0
    if op_type in _REDUCE and in_shapes and in_shapes[0] is not None:
        return int(np.prod(in_shapes[0]))  # a reduction reads every input element
    w = in_shapes[1] if len(in_shapes) > 1 else None
    if op_type in _CONV and w is not None and len(w) >= 2:
        return out * int(np.prod(w[1:]))
    a = in_shapes[0] if in_shapes else None
    if op_type in _MATMUL and a is not None and len(a) >= 1:
        return out * int(a[-1])
    return out


@dataclass(frozen=True)
class PeerLink:
    """The link to one peer as measured from this device (docs/profile.md, "Peers")."""

    device: str  # the peer's device name, as its agent says of itself
    endpoint: str
    rtt_ms: float  # median round trip of a ping
    bandwidth_mbps: float | None = None  # from the extra time a large ping takes; None: not measured

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"endpoint": self.endpoint, "rtt_ms": round(self.rtt_ms, 4)}
        if self.bandwidth_mbps is not None:
            d["bandwidth_mbps"] = round(self.bandwidth_mbps, 2)
        return d


@dataclass(frozen=True)
class Profile:
    """What `edgepart profile` measured on one device."""

    device: str
    runtime: str  # "onnxruntime 1.20.1" (and LiteRT's, where TFLite steps were timed)
    providers: tuple[str, ...]
    threads: int
    gflops: float  # the whole measured mix: 2 x MACs / time
    speeds: tuple[tuple[str, float], ...]  # (kind, GFLOP/s) for the kinds it saw
    memory_available_mb: float
    steps_ms: tuple[tuple[str, float], ...] = ()  # each step's median, with --bundle
    peers: tuple[PeerLink, ...] = ()  # the peers that answered, by device name
    source: str = ""  # what was timed: a bundle, a model, or the representative set
    cpu: str = ""
    version: int = PROFILE_VERSION
    skipped: tuple[str, ...] = field(default=(), compare=False)  # steps not timed, and why (not written)
    # the fixed cost of one step beyond its compute, in ms: of the files timed, the least a median run took
    # beyond its nodes' kernel time (the packager's step_ms for this device; docs/planning.md, "Fixed
    # costs"); None: not measured (an older profile)
    step_ms: float | None = None
    # the LiteRT it found ("ai-edge-litert 2.3.0"; empty: none) and, where it timed the representative
    # set's TFLite twins on it too, their speeds (docs/profile.md, "LiteRT"): what `--format auto` reads
    # to pick this device's runtime, and the packager's speeds for it when it runs TFLite
    litert: str = ""
    tflite_gflops: float | None = None
    tflite_speeds: tuple[tuple[str, float], ...] = ()

    @property
    def prefers_tflite(self) -> bool:
        """Whether the same layers ran faster on LiteRT than on onnxruntime here."""
        return self.tflite_gflops is not None and self.tflite_gflops > self.gflops

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "edgepart-profile", "version": self.version, "device": self.device, "cpu": self.cpu,
                "runtime": self.runtime, "providers": list(self.providers), "threads": self.threads,
                "source": self.source, "gflops": round(self.gflops, 4),
                "speeds_gflops": {k: round(v, 4) for k, v in self.speeds},
                "memory_available_mb": round(self.memory_available_mb, 1),
                "steps_ms": {k: round(v, 4) for k, v in self.steps_ms},
                "peers": {p.device: p.to_dict() for p in self.peers},
                **({} if self.step_ms is None else {"step_ms": round(self.step_ms, 5)}),
                **({"litert": self.litert} if self.litert else {}),
                **({} if self.tflite_gflops is None else {
                    "tflite_gflops": round(self.tflite_gflops, 4),
                    "tflite_speeds_gflops": {k: round(v, 4) for k, v in self.tflite_speeds}})}

    def to_yaml(self) -> str:
        """The profile as YAML, written without a YAML library (a device has none): JSON's quoted
        strings and numbers are YAML's too."""
        lines = []
        for k, v in self.to_dict().items():
            if isinstance(v, dict):
                lines.append(f"{k}:" + (" {}" if not v else ""))
                lines += [f"  {json.dumps(str(kk))}: {json.dumps(vv)}" for kk, vv in v.items()]  # (a map: YAML's flow form)
            else:
                lines.append(f"{k}: {json.dumps(v)}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def from_dict(d: Any, source: str = "profile") -> "Profile":
        if not isinstance(d, dict) or d.get("kind") != "edgepart-profile":
            raise BundleError(f"{source} is not an edgepart profile (no `kind: edgepart-profile`). "
                              f"Write one with `edgepart profile --out FILE` on the device.")
        if d.get("version") != PROFILE_VERSION:
            raise BundleError(f"{source} is a profile of version {d.get('version')!r}; this edgepart reads version "
                              f"{PROFILE_VERSION}. Run `edgepart profile` again with this edgepart.")
        try:
            speeds = {str(k): float(v) for k, v in (d.get("speeds_gflops") or {}).items()}
            p = Profile(str(d["device"]), str(d.get("runtime", "")), tuple(d.get("providers", ())),
                        int(d.get("threads", 0)), float(d["gflops"]), tuple(sorted(speeds.items())),
                        float(d.get("memory_available_mb", 0.0)),
                        tuple((str(k), float(v)) for k, v in (d.get("steps_ms") or {}).items()),
                        tuple(_peer(str(k), v) for k, v in (d.get("peers") or {}).items()),
                        str(d.get("source", "")), str(d.get("cpu", "")),
                        step_ms=None if d.get("step_ms") is None else float(d["step_ms"]),
                        litert=str(d.get("litert", "")),
                        tflite_gflops=None if d.get("tflite_gflops") is None else float(d["tflite_gflops"]),
                        tflite_speeds=tuple(sorted((str(k), float(v)) for k, v in
                                                   (d.get("tflite_speeds_gflops") or {}).items())))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{source} is a malformed profile ({type(e).__name__}: {e}). Run `edgepart profile` "
                              f"again.") from None
        bad = [k for k, v in p.speeds + p.tflite_speeds if k not in KINDS or not v > 0]
        bad += ([] if p.gflops > 0 else ["gflops"]) + ([] if p.tflite_gflops is None or p.tflite_gflops > 0
                                                       else ["tflite_gflops"])
        bad += [] if p.step_ms is None or p.step_ms >= 0 else ["step_ms"]
        bad += [f"peers.{q.device}" for q in p.peers
                if not q.rtt_ms >= 0 or (q.bandwidth_mbps is not None and not q.bandwidth_mbps > 0)]
        if bad:
            raise BundleError(f"{source}: speeds must be positive GFLOP/s of the kinds {', '.join(KINDS)}; "
                              f"{', '.join(bad)} is not.")
        return p


def _peer(device: str, d: Any) -> PeerLink:
    if not isinstance(d, dict):
        raise TypeError(f"peers.{device} must be a map of endpoint, rtt_ms and bandwidth_mbps")
    bw = d.get("bandwidth_mbps")
    return PeerLink(device, str(d.get("endpoint", "")), float(d["rtt_ms"]), None if bw is None else float(bw))


@dataclass
class _Tally:
    macs: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    us: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    fixed_ms: list[float] = field(default_factory=list)  # per file: a median run less its kernels' time


def _shapes(entries: Any) -> list[list[int] | None]:
    """onnxruntime's `input_type_shape` / `output_type_shape`: [{"float": [dims]}, ...]."""
    out = []
    for e in entries or []:
        dims = next(iter(e.values()), None) if isinstance(e, dict) and e else None
        out.append([int(x) for x in dims] if isinstance(dims, list) else None)
    return out


def tally_trace(trace_file: str | Path, tally: _Tally) -> None:
    """Add the node events of one onnxruntime profiler trace to `tally`, by kind."""
    for ev in json.loads(Path(trace_file).read_text()):
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        op = str(args.get("op_name", ""))
        ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
        w = ins[1] if len(ins) > 1 else None
        c = ins[0][1] if ins and ins[0] is not None and len(ins[0]) > 1 else None
        kind = op_kind(op, w, c)
        tally.macs[kind] += node_macs(op, ins, outs[0] if outs else None)
        tally.us[kind] += float(ev.get("dur", 0))


def memory_available_mb() -> float:
    """MemAvailable, or the cgroup's memory limit where that is smaller."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) / 1024
    except OSError:
        pass
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            v = Path(f).read_text().strip()
            if v.isdigit():
                avail = min(avail, int(v) / 2**20)
        except OSError:
            continue
    return avail if avail != float("inf") else 0.0


def _feeds(inputs) -> dict[str, np.ndarray]:
    """Made-up inputs of each input's shape and type. An open first axis (the batch) is 1; an input with
    other open axes is a BundleError: a 1 there would time a tiny tensor (a 1x1 image) and write a
    profile that is wrong by orders of magnitude."""
    rng = np.random.default_rng(0)
    out = {}
    for i in inputs:
        open_axes = [f"{d if isinstance(d, str) else '?'} (axis {k})" for k, d in enumerate(i.shape)
                     if k > 0 and not (isinstance(d, int) and d > 0)]
        if open_axes:
            raise BundleError(f"its input {i.name!r} leaves {', '.join(open_axes)} open, so its size here would be "
                              f"made up. Fix them first (python -m onnxruntime.tools.make_dynamic_shape_fixed "
                              f"--input_name {i.name} --input_shape ... in.onnx out.onnx), or profile the bundle "
                              f"(--bundle), whose steps have the sizes the plan was packaged for")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        kind = str(getattr(i, "type", getattr(i, "dtype", "float")))
        if "float" in kind or "double" in kind:
            dt = np.float16 if "16" in kind else np.float64 if ("64" in kind or "double" in kind) else np.float32
            out[i.name] = rng.standard_normal(shape).astype(dt)
        elif "bool" in kind:
            out[i.name] = np.ones(shape, np.bool_)
        elif "int8" in kind:  # 8-bit inputs are mostly pixels (a camera's uint8 frame): any value
            dt = np.uint8 if "uint8" in kind else np.int8
            info = np.iinfo(dt)
            out[i.name] = rng.integers(info.min, info.max + 1, size=shape, dtype=dt)
        else:  # wider integers are mostly sizes and indices: 0 would empty a shape
            dt = {"uint16": np.uint16, "int16": np.int16, "uint32": np.uint32, "uint64": np.uint64}.get(
                next((k for k in ("uint16", "int16", "uint32", "uint64") if k in kind), ""),
                np.int64 if "64" in kind else np.int32)
            out[i.name] = np.ones(shape, dt)
    return out


def time_onnx(path: str | Path, providers, threads: int, seconds: float, tally: _Tally) -> float:
    """Run one ONNX file for about `seconds` (after a warm-up) with onnxruntime's profiler on; add
    its node times to `tally`; return the median run in ms."""
    import onnxruntime as ort

    names, options = providers.for_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "trace")
        try:
            sess = ort.InferenceSession(str(path), so, providers=names, provider_options=options)
        except Exception as e:  # onnxruntime's own untyped errors
            raise BundleError(f"onnxruntime cannot load {path}: {str(e).strip().splitlines()[0][:200]}") from None
        try:
            feeds = _feeds(sess.get_inputs())
        except BundleError as e:
            raise BundleError(f"{path}: {e}") from None
        try:
            for _ in range(3):
                sess.run(None, feeds)
        except Exception as e:  # onnxruntime's own untyped errors
            raise BundleError(f"{path} does not run on inputs made up from its shapes "
                              f"({str(e).strip().splitlines()[0][:200]}); profile the whole model (--model) or "
                              f"the representative set instead.") from None
        ts = []
        t_end = time.perf_counter() + seconds
        while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < 10000):
            t = time.perf_counter()
            sess.run(None, feeds)
            ts.append((time.perf_counter() - t) * 1e3)
        trace = sess.end_profiling()
        warm = _Tally()
        tally_trace(trace, warm)
        # the warm-up runs are in the trace too: scale the totals to the timed runs only
        frac = len(ts) / (len(ts) + 3)
        for k in KINDS:
            tally.macs[k] += warm.macs[k] * frac
            tally.us[k] += warm.us[k] * frac
        # a run's time beyond its nodes' kernels: the fixed cost of a step (docs/planning.md, "Fixed costs")
        tally.fixed_ms.append(statistics.median(ts) - sum(warm.us.values()) / (len(ts) + 3) / 1e3)
    return statistics.median(ts)


def measure(files: Sequence[tuple[str, str | Path]], *, providers, threads: int, seconds: float = 2.0,
            device: str = "", source: str = "", progress: Callable[[str], None] | None = None,
            tflite: Callable[[str], float] | None = None) -> Profile:
    """Time each (name, ONNX file) and sum up the kinds. `tflite(name)` times a TFLite step (its
    median ms; it adds to steps_ms, not to the kinds, which onnxruntime's profiler measures)."""
    import onnxruntime as ort

    tally, steps, skipped = _Tally(), [], []
    for name, path in files:
        if progress:
            progress(f"timing {name}")
        if tflite is not None and str(path).endswith(".tflite"):
            steps.append((name, tflite(name)))
            continue
        try:
            steps.append((name, time_onnx(path, providers, threads, seconds / max(1, len(files)), tally)))
        except BundleError as e:  # a step whose inputs cannot be made up from its shapes: the others still count
            skipped.append(f"{name}: {e}")
            log.warning("not timed: %s", skipped[-1])
    total_macs, total_us = sum(tally.macs.values()), sum(tally.us.values())
    if total_us <= 0:
        raise BundleError("Nothing was timed" + (f" ({'; '.join(skipped)})" if skipped else
                                                 ": the files hold no node onnxruntime could profile") + ".")
    speeds = tuple((k, 2 * tally.macs[k] / (tally.us[k] * 1e-6) / 1e9) for k in KINDS
                   if tally.us[k] > 0 and tally.macs[k] > 0)
    return Profile(device or platform.node(), f"onnxruntime {ort.__version__}", tuple(providers.short), threads,
                   2 * total_macs / (total_us * 1e-6) / 1e9, speeds, memory_available_mb(), tuple(steps), (),
                   source, _cpu_name(), skipped=tuple(skipped),
                   step_ms=max(min(tally.fixed_ms), 0.0) if tally.fixed_ms else None)



def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def representative_tflite() -> list[tuple[str, Path, tuple]]:
    """The representative set's TFLite twins (data/profile/*.tflite, written by
    `python -m edgepart.packager.profile_set --tflite`), each with the `io` that maps its ONNX
    tensors to its signature: [(kind, file, io)]; empty where they are not shipped."""
    import json

    from .plan import TensorIO

    folder = Path(__file__).parent / "data" / "profile"
    try:
        ios = json.loads((folder / "tflite.json").read_text())
    except (OSError, ValueError):
        return []
    return [(name, folder / f"{name}.tflite", tuple(TensorIO.from_dict(t) for t in io))
            for name, io in sorted(ios.items()) if (folder / f"{name}.tflite").is_file()]


def with_litert(p: Profile, onnx_ms: dict[str, float], tflite_ms: dict[str, float], litert: str) -> Profile:
    """`p` (the representative set timed on onnxruntime, `onnx_ms` each model's median) with the same
    models' medians on LiteRT, `tflite_ms`: each kind's LiteRT speed is its onnxruntime speed times how
    much faster its model ran there, and the whole set's likewise (the same layers, the same MACs)."""
    both = [k for k in tflite_ms if k in onnx_ms and tflite_ms[k] > 0]
    if not both:
        return dataclasses.replace(p, litert=litert)
    onnx_speed = dict(p.speeds)
    speeds = tuple((k, onnx_speed[k] * onnx_ms[k] / tflite_ms[k]) for k in sorted(both) if k in onnx_speed)
    whole = p.gflops * sum(onnx_ms[k] for k in both) / sum(tflite_ms[k] for k in both)
    return dataclasses.replace(p, litert=litert, tflite_gflops=whole, tflite_speeds=speeds)


def representative_set() -> list[tuple[str, Path]]:
    """The models timed when neither a bundle nor a model is given: one per kind, shipped with
    edgepart (data/profile/, written by docs/profile.md's recipe)."""
    folder = Path(__file__).parent / "data" / "profile"
    files = sorted(folder.glob("*.onnx"))
    if not files:
        raise BundleError(f"The representative set is missing from {folder}; give --bundle or --model.")
    return [(f.stem, f) for f in files]


__all__ = ["KINDS", "PROFILE_VERSION", "PeerLink", "Profile", "measure", "memory_available_mb", "node_macs", "op_kind",
           "representative_set", "representative_tflite", "tally_trace", "with_litert"]
