"""The plan: a pure, frozen value that says which device runs what and where tensors go.

Every strategy compiles into the same shape (docs/architecture.md, "The packager compiles, the agent
only executes"): a tuple of steps, each one sub-model on one device with named inputs and outputs, and a
tuple of routes, each one tensor travelling from a producer (a device, or the caller) to a consumer
(a device, or the caller) with a codec. The plan id is a hash of the whole value, file hashes
included, so two bundles agree on a plan id exactly when they were packaged together.

The JSON form is documented in docs/bundle-format.md; bump SCHEMA_VERSION on any change that an
older reader would misread, and give new fields defaults. A plan is written with the oldest version
that holds it: all-ONNX plans stay version 1 (older edgeparts read them, their ids are unchanged);
a plan with a TFLite step is version 2, which an edgepart without LiteRT support refuses by name;
a plan with sources (lanes: docs/priority.md, "Plans with sources") is version 3, since an older
agent would run every source's steps for every request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from .errors import BundleError

SCHEMA_VERSION = 3  # the newest version this edgepart reads and writes
READS = (1, 2, 3)
RUNTIMES = ("onnx", "tflite")
CALLER = "@caller"  # the pseudo-device that feeds model inputs and receives model outputs

Dim = int | str  # a concrete size, or a symbolic name kept from the original model


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor with its element type and shape (symbolic dims kept by name)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TensorSpec":
        return TensorSpec(name=_str(d["name"]), dtype=_str(d["dtype"]), shape=tuple(_dim(x) for x in _list(d["shape"])))


@dataclass(frozen=True)
class Codec:
    """How a tensor travels: dense, or (later strategies) a static channel subset, sparse, quantised."""

    kind: str = "dense"
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Codec":
        return Codec(kind=_str(d["kind"]), params=tuple((_str(k), _freeze(v)) for k, v in _list(d.get("params", []))))


@dataclass(frozen=True)
class Route:
    """One tensor from its producer to one consumer (devices by name, or CALLER)."""

    tensor: str
    src: str
    dst: str
    codec: Codec = field(default_factory=Codec)
    source: str = ""  # in a plan with lanes: the one source whose requests take it ("": every request)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Route":
        return Route(_str(d["tensor"]), _str(d["src"]), _str(d["dst"]), Codec.from_dict(d.get("codec", {"kind": "dense"})),
                     _str(d.get("source", "")))


@dataclass(frozen=True)
class TensorIO:
    """How one of a TFLite step's tensors meets the plan (docs/tflite.md): the plan's tensor `name`
    (its ONNX name, as it travels on the wire), the TFLite signature's name for it, `key`, and the
    axes permutation `perm` with tflite_tensor = plan_tensor.transpose(perm) (empty: the same
    layout). The wire always carries the plan's layout; the step's runner transposes at its edge."""

    name: str
    key: str
    perm: tuple[int, ...] = ()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TensorIO":
        return TensorIO(_str(d["name"]), _str(d["key"]), tuple(_int(a) for a in _list(d.get("perm", []))))


@dataclass(frozen=True)
class Step:
    """One sub-model run on one device; its file lives in that device's bundle. `runtime` says
    what runs the file: "onnx" (onnxruntime) or "tflite" (LiteRT), whose `io` maps the plan's
    tensors to the TFLite signature's."""

    name: str
    device: str
    model_file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data_files: tuple[tuple[str, str], ...] = ()  # (external-data file, sha256)
    nodes: int = 0
    estimated_ms: float = 0.0
    runtime: str = "onnx"
    io: tuple[TensorIO, ...] = ()
    source: str = ""  # in a plan with lanes: the one source whose requests run it ("": every request)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Step":
        return Step(
            name=_str(d["name"]),
            device=_str(d["device"]),
            model_file=_str(d["model_file"]),
            sha256=_str(d["sha256"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in _list(d["inputs"])),
            outputs=tuple(TensorSpec.from_dict(t) for t in _list(d["outputs"])),
            data_files=tuple((_str(f), _str(h)) for f, h in _list(d.get("data_files", []))),
            nodes=_int(d.get("nodes", 0)),
            estimated_ms=_num(d.get("estimated_ms", 0.0)),
            runtime=_str(d.get("runtime", "onnx")),
            io=tuple(TensorIO.from_dict(t) for t in _list(d.get("io", []))),
            source=_str(d.get("source", "")),
        )

    def files(self) -> dict[str, str]:
        """Every file this step needs, with its sha256."""
        return {self.model_file: self.sha256, **dict(self.data_files)}


@dataclass(frozen=True)
class DeviceSpec:
    """A device as the plan knows it: its name, its execution-provider preference and, where the
    cluster sets it, the onnxruntime threads its agent uses (0: what the process may use)."""

    name: str
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DeviceSpec":
        return DeviceSpec(name=_str(d["name"]),
                          providers=tuple(_str(p) for p in _list(d.get("providers", ["CPUExecutionProvider"]))),
                          threads=_int(d.get("threads", 0)))


@dataclass(frozen=True)
class Hints:
    """Where requests enter and leave the cluster: facts the packager reads off the routes once
    (packager/bundles.py, `model_plan`), so that the app's client picks a request's fast path from
    them (docs/agents.md, "Requests and deadlines") instead of guessing from the plan's shape.

    `entry`: the one device every model input goes to ("" where they go to several).
    `entry_step`: the entry's step, where it is the entry's whole program and only the caller feeds
    it (a caller in the entry's process may run it in its own thread), else "".
    `exit`: the one device besides the entry that model outputs come back from ("" where none, or
    several, do)."""

    entry: str = ""
    entry_step: str = ""
    exit: str = ""

    def __bool__(self) -> bool:
        return bool(self.entry or self.entry_step or self.exit)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Hints":
        return Hints(entry=_str(d.get("entry", "")), entry_step=_str(d.get("entry_step", "")),
                     exit=_str(d.get("exit", "")))


RULES = ("round-robin", "least-outstanding", "priority")


@dataclass(frozen=True)
class Alternatives:
    """Devices that can each take the same part of a request: every route into one of them carries
    the same tensors, and for each request the sender (the caller, or a device) sends them to one
    only, picked by `rule` (docs/architecture.md, "Alternatives"). The agent applies the rule; the
    packager says which devices are alternatives and which rule picks.

    `round-robin` takes them in turn; `least-outstanding` takes the one with the fewest requests the
    sender has sent it and not yet seen answered (the caller sees every answer; a device sending on
    counts until its own part of the request is done); `priority` takes the one of least
    cost_ms + the work queued there ahead of the request + the sender's claims on it (the rule of
    edgepart.schedule, docs/priority.md), where `costs_ms` gives the packager's estimate of sending
    the part there and computing it, one per device in the same order.

    `source`: in a plan with lanes, the source whose requests pick among these ("": every request).
    A device may be in several groups of different sources, in one group per source only."""

    devices: tuple[str, ...]
    rule: str = "round-robin"
    source: str = ""
    costs_ms: tuple[float, ...] = ()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Alternatives":
        return Alternatives(tuple(_str(x) for x in _list(d["devices"])), _str(d.get("rule", "round-robin")),
                            _str(d.get("source", "")), tuple(_num(c) for c in _list(d.get("costs_ms", []))))


LANE_RULES = ("priority", "fifo")


@dataclass(frozen=True)
class Lane:
    """One source's requests through the plan (docs/priority.md, "Plans with sources"): where they
    start, how much they matter, how often they come, the deadline they must meet ("0": none), and the
    packager's estimate of their latency. A request of this source runs the steps and takes the
    routes and alternatives whose `source` is its name or empty."""

    source: str
    device: str
    priority: float
    rate_hz: float
    deadline_ms: float = 0.0
    expected_ms: float = 0.0

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Lane":
        return Lane(_str(d["source"]), _str(d["device"]), _num(d["priority"]), _num(d["rate_hz"]),
                    _num(d.get("deadline_ms", 0.0)), _num(d.get("expected_ms", 0.0)))


@dataclass(frozen=True)
class Lanes:
    """The plan's sources and how agents order the work of their requests: `priority` (highest
    effective priority first, aging by `aging_ms`: edgepart.schedule) or `fifo` (by arrival, the
    priority-blind baseline). Empty: a plan without sources, whose requests carry none."""

    lanes: tuple[Lane, ...] = ()
    rule: str = "priority"
    aging_ms: float = 100.0

    def __bool__(self) -> bool:
        return bool(self.lanes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ln.source for ln in self.lanes)

    def get(self, source: str) -> Lane | None:
        return next((ln for ln in self.lanes if ln.source == source), None)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Lanes":
        return Lanes(tuple(Lane.from_dict(x) for x in _list(d.get("lanes", []))), _str(d.get("rule", "priority")),
                     _num(d.get("aging_ms", 100.0)))


@dataclass(frozen=True)
class Plan:
    """The whole program of a cluster: steps per device and routes between them."""

    strategy: str
    model_name: str
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    devices: tuple[DeviceSpec, ...]
    steps: tuple[Step, ...]
    routes: tuple[Route, ...]
    objective: str = "latency"
    estimates: tuple[tuple[str, float], ...] = ()
    schema_version: int = 1  # at least this; to_dict writes what the steps need (see the module's doc)
    alternatives: tuple[Alternatives, ...] = ()
    hints: Hints = field(default_factory=Hints)
    lanes: Lanes = field(default_factory=Lanes)

    def __post_init__(self) -> None:
        names = {d.name for d in self.devices}
        for s in self.steps:
            if s.runtime not in RUNTIMES or (s.runtime == "tflite") != bool(s.io):
                raise BundleError(f"Step {s.name} names runtime {s.runtime!r} with {len(s.io)} TFLite tensor maps "
                                  f"(this edgepart runs {', '.join(RUNTIMES)}; a TFLite step maps every tensor). "
                                  f"Package the model again with this edgepart.")
        h = self.hints
        if (h.entry and h.entry not in names) or (h.exit and h.exit not in names) or (h.entry_step and not h.entry):
            raise BundleError(f"The plan's hints {h} name devices it does not have. Package the model again.")
        seen: dict[str, set[str]] = {}  # source -> devices in one of its groups
        for g in self.alternatives:
            if g.rule not in RULES:
                raise BundleError(f"The plan picks among {', '.join(g.devices)} by an unknown rule {g.rule!r} "
                                  f"(this edgepart knows {', '.join(RULES)}). Package again with this edgepart.")
            taken = seen.setdefault(g.source, set())
            if (len(g.devices) < 2 or not set(g.devices) <= names or taken & set(g.devices)
                    or (g.costs_ms and len(g.costs_ms) != len(g.devices))):
                raise BundleError(f"The plan's alternatives {list(g.devices)} are malformed: at least two of its "
                                  f"devices, each in one group only. Package the model again.")
            taken |= set(g.devices)
        self._check_lanes(names)

    def _check_lanes(self, names: set[str]) -> None:
        lanes = self.lanes
        tagged = ({s.source for s in self.steps} | {r.source for r in self.routes}
                  | {g.source for g in self.alternatives}) - {""}
        known = set(lanes.names)
        bad = ("" if lanes.rule in LANE_RULES else f"an unknown rule {lanes.rule!r}") or (
            f"parts of sources it does not list ({', '.join(sorted(tagged - known))})" if tagged - known else "") or (
            f"a source on a device it does not have" if any(ln.device not in names for ln in lanes.lanes) else "") or (
            "a source twice" if len(known) != len(lanes.lanes) else "") or (
            "a priority, rate or aging that is not positive" if any(
                not (ln.priority > 0 and ln.rate_hz > 0 and ln.deadline_ms >= 0) for ln in lanes.lanes)
            or not lanes.aging_ms > 0 else "")
        if bad:
            raise BundleError(f"The plan's sources are malformed: {bad}. Package the model again with this edgepart "
                              f"(docs/priority.md).")

    # -- derived ------------------------------------------------------------------------------
    @cached_property
    def plan_id(self) -> str:
        """A short hash of the whole plan; agents of different plan ids refuse to talk."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def steps_of(self, device: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.device == device)

    def routes_from(self, src: str) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.src == src)

    def routes_to(self, dst: str) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.dst == dst)

    def lane(self, source: str) -> "Plan":
        """What the requests of `source` see of a plan with lanes: its steps, routes and alternatives
        (those of that source and those of every source), untagged, as a plan without sources.
        The view keeps the plan's id: a session of the source talks to the plan's agents under it
        (docs/priority.md, "Plans with sources")."""
        if self.lanes.get(source) is None:
            raise BundleError(f"The plan has no source {source!r}; its sources are "
                              f"{', '.join(self.lanes.names) or 'none'}.")
        import dataclasses

        mine = ("", source)
        view = dataclasses.replace(
            self, steps=tuple(dataclasses.replace(s, source="") for s in self.steps if s.source in mine),
            routes=tuple(dataclasses.replace(r, source="") for r in self.routes if r.source in mine),
            alternatives=tuple(dataclasses.replace(g, source="") for g in self.alternatives if g.source in mine),
            hints=Hints(), lanes=Lanes())
        view.__dict__["plan_id"] = self.plan_id  # (a cached property: set, not computed from the view)
        return view

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _plain(asdict(self))
        d["schema_version"] = self.written_version
        for st in d["steps"]:
            if st["runtime"] == "onnx":  # written only for TFLite steps: ONNX plans keep their ids
                del st["runtime"], st["io"]
            if not st["source"]:  # and only plans with sources write them (the same below)
                del st["source"]
        for r in d["routes"]:
            if not r["source"]:
                del r["source"]
        for g in d["alternatives"]:
            if not g["source"]:
                del g["source"]
            if not g["costs_ms"]:
                del g["costs_ms"]
        if not self.lanes:
            del d["lanes"]
        for dev in d["devices"]:
            if not dev["threads"]:  # written only when set: plans without it keep their ids
                del dev["threads"]
        if not d["alternatives"]:  # the same: only plans that have alternatives write them
            del d["alternatives"]
        if not self.hints:  # and only plans with hints write them
            del d["hints"]
        else:
            d["hints"] = {k: v for k, v in d["hints"].items() if v}
        return d

    @property
    def written_version(self) -> int:
        """The schema version this plan is written with: the oldest that holds it."""
        return max(self.schema_version, 3 if self.lanes else 2 if any(s.runtime != "onnx" for s in self.steps) else 1)

    def alternatives_of(self, device: str) -> Alternatives | None:
        """The group of alternative devices `device` belongs to, if any."""
        return next((g for g in self.alternatives if device in g.devices), None)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Plan":
        if not isinstance(d, dict):
            raise BundleError(f"The plan is malformed (a JSON {type(d).__name__}, not an object). The manifest was "
                              f"edited or truncated; package the model again.")
        version = d.get("schema_version")
        if type(version) is not int or version not in READS:
            raise BundleError(
                f"This plan has schema version {version!r}, but this edgepart reads versions "
                f"{', '.join(map(str, READS))}. Package the model again with this edgepart, or install the "
                f"edgepart version that wrote it on every device."
            )
        # everything past the version is inside the try: a manifest edited or truncated anywhere is
        # one clear BundleError, never a KeyError or TypeError from deep in here (docs/bundle-format.md)
        try:
            if version < 2 and any(_get(s, "runtime", "onnx") != "onnx" for s in _list(d.get("steps", []))):
                raise BundleError("The plan has TFLite steps but schema version 1. The manifest was edited; "
                                  "package the model again.")
            if version < 3 and "lanes" in d:
                raise BundleError(f"The plan has sources but schema version {version}. The manifest was edited; "
                                  f"package the model again.")
            return Plan(
                strategy=_str(d["strategy"]),
                model_name=_str(d["model_name"]),
                model_sha256=_str(d["model_sha256"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in _list(d["inputs"])),
                outputs=tuple(TensorSpec.from_dict(t) for t in _list(d["outputs"])),
                devices=tuple(DeviceSpec.from_dict(x) for x in _list(d["devices"])),
                steps=tuple(Step.from_dict(s) for s in _list(d["steps"])),
                routes=tuple(Route.from_dict(r) for r in _list(d["routes"])),
                objective=_str(d.get("objective", "latency")),
                estimates=tuple((_str(k), _num(v)) for k, v in _list(d.get("estimates", []))),
                schema_version=version,
                alternatives=tuple(Alternatives.from_dict(g) for g in _list(d.get("alternatives", []))),
                hints=Hints.from_dict(d.get("hints", {})),
                lanes=Lanes.from_dict(d.get("lanes", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise BundleError(
                f"The plan is malformed ({type(e).__name__}: {what}). The manifest was edited or "
                f"truncated; package the model again."
            ) from None


# Readers for the JSON form: a value of the wrong kind is a TypeError, which from_dict turns into a
# BundleError (a string where a list belongs would otherwise be read letter by letter).
def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, found {x!r:.60}")
    return x


def _int(x: Any) -> int:
    if type(x) is not int:
        raise TypeError(f"expected a whole number, found {x!r:.60}")
    return x


def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"expected a number, found {x!r:.60}")
    return float(x)


def _dim(x: Any) -> Dim:
    return x if isinstance(x, str) else _int(x)


def _list(x: Any) -> list:
    if not isinstance(x, list):
        raise TypeError(f"expected a list, found {x!r:.60}")
    return x


def _get(d: Any, key: str, default: Any) -> Any:
    if not isinstance(d, dict):
        raise TypeError(f"expected an object, found {d!r:.60}")
    return d.get(key, default)


def _plain(x: Any) -> Any:
    """Tuples to lists, recursively, so JSON round trips compare equal."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _freeze(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


__all__ = [
    "CALLER",
    "RULES",
    "Alternatives",
    "SCHEMA_VERSION",
    "Codec",
    "DeviceSpec",
    "LANE_RULES",
    "Lane",
    "Lanes",
    "Plan",
    "Route",
    "READS",
    "RUNTIMES",
    "Step",
    "TensorIO",
    "TensorSpec",
]
