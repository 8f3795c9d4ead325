"""The cluster description (cluster.yaml): devices and the links between them.

    devices:
      - {name: jetson-a, gflops: 200, memory_mb: 4096, providers: [CUDAExecutionProvider]}
      - {name: pi-b, gflops: 20, memory_mb: 1024}
    links:
      default: {bandwidth_mbps: 100, latency_ms: 2}
      pairs:                                  # optional, symmetric
        - {between: [jetson-a, pi-b], bandwidth_mbps: 50, latency_ms: 5}

A device gives `gflops` (measured effective GFLOP/s) or `speed` (relative to `reference_gflops`,
default 10). `memory_mb` is what the model may use there. Unknown keys are an error, so a typo
does not silently fall back to a default. So is an unknown provider: `providers` takes the names
`edgepart run --providers` does (cuda, tensorrt, cpu, ... or onnxruntime's full names), written
into the plan as onnxruntime's names (docs/cluster.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgepart.errors import ClusterError
from edgepart.runtime import SHORT_NAMES

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class Device:
    name: str
    gflops: float
    memory_mb: float
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    threads: int = 0  # onnxruntime threads its agent uses; 0: what the process may use (docs/agents.md)
    runtime: str = "onnx"  # what its steps are written for: onnx, or tflite (LiteRT; docs/tflite.md)
    # measured GFLOP/s per operator kind (edgepart.profile.KINDS), from its `profile:` (docs/profile.md);
    # empty: every node at `gflops`
    speeds: tuple[tuple[str, float], ...] = ()
    # a spare: in no primary plan, only in the fallback plans compiled for when a device fails
    # (docs/failover.md); the primary plan is planned over the other devices alone
    standby: bool = False
    # the fixed cost of running one step in its agent, in ms, measured (`edgepart profile`,
    # packager/calibrate.py); None: cost.py's nominal figure (docs/planning.md, "Fixed costs")
    step_ms: float | None = None
    # how many Mbit/s of message bytes its agent's CPU handles (receiving and decoding, or framing and
    # sending), measured (packager/calibrate.py, measure_handling); None: not counted. Every
    # strategy's estimates count a message's bytes at both its ends with it (cost.handling_cpu_ms;
    # docs/planning.md, "Fixed costs"), as the allocator and simulator of plans with sources do
    # (docs/priority.md, "Costs per request")
    handling_mbps: float | None = None

    def speed_of(self, kind: str) -> float:
        """GFLOP/s for nodes of `kind`: the profile's figure where it measured that kind, else
        `gflops`; a node fused into the one before it is free on a profiled device (its time is in
        that node's figure: docs/profile.md)."""
        if kind == "fused" and self.speeds:
            return float("inf")
        return next((v for k, v in self.speeds if k == kind), self.gflops)

    @property
    def memory_bytes(self) -> float:
        return self.memory_mb * 1024 * 1024


@dataclass(frozen=True)
class Link:
    bandwidth_mbps: float
    latency_ms: float = 0.0
    # the fixed cost of one message on it beyond bytes / bandwidth + latency, in ms, measured
    # (packager/calibrate.py); None: cost.py's nominal figure (docs/planning.md, "Fixed costs")
    message_ms: float | None = None


@dataclass(frozen=True)
class Cluster:
    devices: tuple[Device, ...]
    default_link: Link
    pair_links: tuple[tuple[str, str, Link], ...] = ()
    # the device whose host the app runs on (a camera's board: cluster.yaml's `caller`); None: the app
    # has a host of its own, on the default link (docs/planning.md, "Where the app runs")
    caller: str | None = None
    # the app's own CPU per request on the caller's device, in ms (its pre- and post-processing: a
    # camera's resizing, decoding, drawing); streamed, that device has that much less time for its
    # stage (docs/planning.md, "Where the app runs"). 0: not counted
    caller_ms: float = 0.0

    def link(self, a: str, b: str) -> Link:
        for x, y, lk in self.pair_links:
            if {x, y} == {a, b}:
                return lk
        return self.default_link

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ClusterError(f"The cluster has no device named {name!r}.")


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    if not path.is_file():
        raise ClusterError(f"{path} does not exist. Write a cluster.yaml (see docs/cluster.md) and pass it with --cluster.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ClusterError(f"{path} is not valid YAML{where}: {what}. Fix it; docs/cluster.md has an example.") from None
    return cluster_from_dict(data, source=str(path), base=path.parent)


def _profile(ref: Any, base: Path | None, where: str):
    from edgepart.errors import BundleError
    from edgepart.profile import Profile

    if not isinstance(ref, str):
        raise ClusterError(f"{where}.profile must be the path of a profile file (`edgepart profile --out FILE`).")
    path = Path(ref) if Path(ref).is_absolute() or base is None else base / ref
    if not path.is_file():
        raise ClusterError(f"{where}.profile: {path} does not exist. Run `edgepart profile --out {Path(ref).name}` "
                           f"on that device and copy the file beside cluster.yaml.")
    try:
        return Profile.from_dict(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as e:
        raise ClusterError(f"{where}.profile: {path} is not valid YAML ({str(e).splitlines()[0]}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClusterError(f"{where}.profile: {path} cannot be read ({e}). Copy the file `edgepart profile` "
                           f"wrote beside cluster.yaml again.") from None
    except BundleError as e:
        raise ClusterError(f"{where}.profile: {e}") from None


def cluster_from_dict(data: Any, source: str = "cluster", base: Path | None = None) -> Cluster:
    """`base`: the folder that relative `profile:` paths are read from (cluster.yaml's)."""
    if not isinstance(data, dict):
        raise ClusterError(f"{source}: expected a mapping with 'devices' and 'links'.")
    _no_unknown(data, {"caller", "caller_ms", "devices", "links", "reference_gflops"}, source)
    ref = _number(data.get("reference_gflops", 10.0), f"{source}: reference_gflops")
    raw = data.get("devices")
    if not isinstance(raw, list) or not raw:
        raise ClusterError(f"{source}: 'devices' must be a non-empty list of {{name, gflops, memory_mb}}.")
    devices, measured = [], []
    for i, d in enumerate(raw):
        where = f"{source}: devices[{i}]"
        if not isinstance(d, dict) or "name" not in d:
            raise ClusterError(f"{where} must be a mapping with at least 'name'.")
        _no_unknown(d, {"name", "gflops", "speed", "memory_mb", "providers", "threads", "runtime", "profile", "standby",
                                "step_ms", "handling_mbps"},
                    where)
        name = str(d["name"])
        if "gflops" in d and "speed" in d:
            raise ClusterError(f"{where} ({name}) gives both 'gflops' and 'speed'; give one.")
        prof = _profile(d["profile"], base, where) if "profile" in d else None
        runtime = d.get("runtime")
        if runtime is None:  # its profile's pick: the runtime the same layers ran faster on (docs/profile.md)
            runtime = "tflite" if prof is not None and prof.prefers_tflite else "onnx"
        # a profiled device that runs TFLite is priced at its LiteRT speeds, where the profile has them
        on_litert = prof is not None and runtime == "tflite" and prof.tflite_gflops is not None
        if "gflops" in d:
            gflops = _number(d["gflops"], f"{where}.gflops")
        elif "speed" in d:
            gflops = _number(d["speed"], f"{where}.speed") * ref
        elif prof is not None:
            gflops = prof.tflite_gflops if on_litert else prof.gflops
        else:
            raise ClusterError(f"{where} ({name}) needs 'gflops' (measured GFLOP/s), 'speed' (relative) or "
                               f"'profile' (a file `edgepart profile` wrote on the device).")
        mem_default = prof.memory_available_mb if prof is not None and prof.memory_available_mb > 0 else 1 << 20
        mem = _number(d.get("memory_mb", mem_default), f"{where}.memory_mb")
        prov = _providers(d.get("providers", list(DEFAULT_PROVIDERS)), f"{where}.providers")
        threads = d.get("threads", 0)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ClusterError(f"{where}.threads must be a whole number of threads (0 or leave it out: the "
                               f"cores the agent's process may use).")
        if runtime not in ("onnx", "tflite"):
            raise ClusterError(f"{where}.runtime is {runtime!r}: give onnx (onnxruntime) or tflite (LiteRT).")
        standby = d.get("standby", False)
        if not isinstance(standby, bool):
            raise ClusterError(f"{where}.standby must be true or false (true: a spare device, docs/failover.md).")
        step = d.get("step_ms", getattr(prof, "step_ms", None))  # cluster.yaml wins over the profile
        step = None if step is None else _number(step, f"{where}.step_ms", allow_zero=True)
        handling = d.get("handling_mbps")
        handling = None if handling is None else _number(handling, f"{where}.handling_mbps")
        speeds = () if prof is None else (prof.tflite_speeds if on_litert else prof.speeds)
        devices.append(Device(name, gflops, mem, prov, threads, runtime, speeds, standby, step,
                              handling))
        if prof is not None:
            measured += [(name, q) for q in prof.peers]
    names = [d.name for d in devices]
    if all(d.standby for d in devices):
        raise ClusterError(f"{source}: every device is marked standby; the primary plan needs at least one device "
                           f"without `standby: true` (docs/failover.md).")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ClusterError(f"{source}: device names must be unique; repeated: {', '.join(sorted(dup))}.")
    links = data.get("links", {}) or {}
    if not isinstance(links, dict):
        raise ClusterError(f"{source}: 'links' must be a mapping with 'default' (and optional 'pairs').")
    _no_unknown(links, {"default", "pairs"}, f"{source}: links")
    default = _link(links.get("default", {"bandwidth_mbps": 100, "latency_ms": 1}), f"{source}: links.default")
    pairs = []
    for i, p in enumerate(links.get("pairs", []) or []):
        where = f"{source}: links.pairs[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("between"), list) or len(p["between"]) != 2:
            raise ClusterError(f"{where} needs 'between: [device-a, device-b]'.")
        a, b = (str(x) for x in p["between"])
        for x in (a, b):
            if x not in names:
                raise ClusterError(f"{where} names {x!r}, which is not a device ({', '.join(names)}).")
        pairs.append((a, b, _link({k: v for k, v in p.items() if k != "between"}, where)))
    caller = _caller(data.get("caller"), devices, source)
    caller_ms = _number(data.get("caller_ms", 0), f"{source}: caller_ms", allow_zero=True)
    if caller_ms and caller is None:
        raise ClusterError(f"{source}: caller_ms is the app's CPU on its device: name that device with "
                           f"`caller: <device>`, or leave caller_ms out.")
    return Cluster(tuple(devices), default, tuple(pairs) + _measured_pairs(measured, pairs, names, default), caller,
                   caller_ms)


def _caller(value: Any, devices: list[Device], source: str) -> str | None:
    """cluster.yaml's `caller`: the device the app runs on, or None (a host of its own)."""
    if value is None:
        return None
    names = [d.name for d in devices]
    if not isinstance(value, str) or value not in names:
        raise ClusterError(f"{source}: caller must name the device whose host the app runs on (one of "
                           f"{', '.join(names)}), or be left out when the app has a host of its own; got {value!r}.")
    if next(d for d in devices if d.name == value).standby:
        raise ClusterError(f"{source}: caller {value!r} is a standby device; the app runs on a device of the "
                           f"primary plan (docs/failover.md), or leave caller out.")
    return value


def _measured_pairs(measured: list, pairs: list, names: list[str], default: Link) -> tuple:
    """Links that profiles measured (docs/profile.md, "Peers"), for the pairs that `links.pairs`
    does not give: latency half the round trip, the measured bandwidth (the default link's where a
    profile has none); measured from both ends, the slower figures. A peer not in the cluster is
    left out."""
    given = {frozenset((a, b)) for a, b, _ in pairs}
    got: dict[frozenset, Link] = {}
    for name, q in measured:
        key = frozenset((name, q.device))
        if q.device not in names or q.device == name or key in given:
            continue
        link = Link(q.bandwidth_mbps or default.bandwidth_mbps, q.rtt_ms / 2)
        old = got.get(key)
        got[key] = link if old is None else Link(min(old.bandwidth_mbps, link.bandwidth_mbps),
                                                 max(old.latency_ms, link.latency_ms))
    return tuple((*sorted(k), v) for k, v in sorted(got.items(), key=lambda kv: sorted(kv[0])))


def _providers(prov: Any, where: str) -> tuple[str, ...]:
    """A device's providers as onnxruntime names, in order: short names (cuda, tensorrt, cpu, ...) as
    `--providers` takes them, full names in any case; `auto` (or an empty list) is no preference. An
    unknown name is an error: the agent would skip it without a word (docs/agents.md)."""
    if isinstance(prov, str):
        prov = [prov]
    if not isinstance(prov, list) or not all(isinstance(p, str) for p in prov):
        raise ClusterError(f"{where} must be a list of execution providers (cuda, tensorrt, cpu, ...).")
    full = {n.lower(): n for n in (*SHORT_NAMES.values(), *_onnxruntime_providers())}
    asked = [p.strip() for p in prov if p.strip()]
    if [p.lower() for p in asked] in ([], ["auto"]):
        return DEFAULT_PROVIDERS
    names = [SHORT_NAMES.get(p.lower(), full.get(p.lower())) for p in asked]  # --providers' table (edgepart.runtime)
    unknown = [p for p, n in zip(asked, names) if n is None]
    if unknown:
        raise ClusterError(f"{where} names {', '.join(map(repr, unknown))}, which edgepart does not know as an "
                           f"execution provider. Give {', '.join(dict.fromkeys(SHORT_NAMES))}, or onnxruntime's "
                           f"full names (CUDAExecutionProvider, ...); or leave it out (no preference).")
    return tuple(dict.fromkeys(n for n in names if n is not None))


def _onnxruntime_providers() -> tuple[str, ...]:
    """Every provider onnxruntime knows of (in any build), where it is installed here."""
    try:
        import onnxruntime as ort

        return tuple(ort.get_all_providers())
    except ImportError:
        return ()


def _link(d: Any, where: str) -> Link:
    if not isinstance(d, dict) or "bandwidth_mbps" not in d:
        raise ClusterError(f"{where} needs 'bandwidth_mbps' (and optionally 'latency_ms').")
    _no_unknown(d, {"bandwidth_mbps", "latency_ms", "message_ms"}, where)
    msg = d.get("message_ms")
    return Link(_number(d["bandwidth_mbps"], f"{where}.bandwidth_mbps"),
                _number(d.get("latency_ms", 0.0), f"{where}.latency_ms", allow_zero=True),
                None if msg is None else _number(msg, f"{where}.message_ms", allow_zero=True))


def _number(v: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not allow_zero):
        raise ClusterError(f"{where} must be a positive number, not {v!r}.")
    return float(v)


def _no_unknown(d: dict, allowed: set[str], where: str) -> None:
    extra = set(map(str, d)) - allowed
    if extra:
        raise ClusterError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}.")
