"""The strategy protocol and its registry (docs/architecture.md, "Strategies").

A strategy is one way of splitting a model: it plans (pure figures, no files), packages (compiles
the model into every device's steps and routes, and writes the bundles through
edgepart.packager.bundles) and reports (the rows of the package report). The packager's entry
points (edgepart.packager.package / plan), the CLI's `--strategy` choices and `--help`, and the
report all read the registry; none of them names a strategy.

A new strategy is one sub-package of edgepart.packager.strategies whose `__init__` calls
`register(...)`; the registry imports every sub-package on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import onnx

from edgepart.errors import PlanningError
from edgepart.plan import Plan

from edgepart.packager.cluster import Cluster


class StreamedFigures:
    """Throughput from a planned strategy's `_period(fixed)`: the busiest device or link's time per
    request, without or with the fixed costs of steps and messages (docs/planning.md, "Fixed costs")."""

    def _period(self, fixed: bool) -> float:
        raise NotImplementedError

    @property
    def throughput_per_s(self) -> float:
        period = self._period(False)
        return 1e3 / period if period > 0 else float("inf")

    @property
    def throughput_with_fixed_per_s(self) -> float:
        """Streamed, with each device's steps and each link's messages at their fixed costs."""
        period = self._period(True)
        return 1e3 / period if period > 0 else float("inf")


@dataclass(frozen=True)
class Job:
    """What every strategy is given: the model as read, the cluster, the planning shapes and the
    options common to all (objective, wire codec), with the strategy's own options in `options`."""

    model: onnx.ModelProto  # as read: its sha256 names the bundles
    model_name: str
    cluster: Cluster
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    objective: str = "latency"
    wire_codec: str = "dense"
    options: Mapping[str, Any] = field(default_factory=dict)
    # example inputs (--inputs): for the report's fidelity when no calibration data is given
    feeds: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None

    def option(self, name: str, default: Any = None) -> Any:
        v = self.options.get(name)
        return default if v is None else v

    def say(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what)


@runtime_checkable
class Planned(Protocol):
    """A strategy's plan before anything is written: its figures, as JSON and as a printed table."""

    strategy: str

    def to_dict(self) -> dict: ...

    def show(self, console, title: str) -> None: ...


@dataclass(frozen=True)
class FallbackPlan:
    """A fallback plan `package` compiled for when the device `without` fails (docs/failover.md): the
    plan, over the other primaries and the spares, and each of its devices' bundle folders
    (dist/<device>/fallback/<without>/)."""

    without: str
    plan: Plan
    bundle_dirs: dict[str, Path]

    def to_dict(self) -> dict:
        return {"without": self.without, "plan_id": self.plan.plan_id, "devices": list(self.plan.device_names()),
                "estimates": dict(self.plan.estimates), "bundles": {k: str(v) for k, v in self.bundle_dirs.items()}}


@dataclass(frozen=True)
class Packaged:
    """What `package` wrote: the plan, each device's bundle folder, and the strategy's own figures
    (`planned`) and report (when asked for)."""

    plan: Plan
    out_dir: Path
    bundle_dirs: dict[str, Path]
    planned: Planned
    report: Any = None  # edgepart.packager.check.report.PackageReport when a report was asked for
    details: Any = None  # the strategy's own result (e.g. the channel program, RePurpose's report)
    conversions: tuple = ()  # edgepart.packager.formats.Converted: steps meant for TFLite (--format)
    fallbacks: tuple[FallbackPlan, ...] = ()  # one per primary device, where cluster.yaml names spares

    def to_dict(self) -> dict:
        d = self.planned.to_dict()
        d["plan_id"] = self.plan.plan_id
        d["estimates"] = dict(self.plan.estimates)
        d["bundles"] = {k: str(v) for k, v in self.bundle_dirs.items()}
        if self.report is not None:
            d["summary"] = self.report.summary()
        if self.conversions:
            d["formats"] = [{"step": c.step, "device": c.device, "runtime": c.runtime,
                             "max_abs_diff": c.max_abs_diff, "stays_onnx_because": c.reason or None}
                            for c in self.conversions]
        if self.fallbacks:
            d["fallbacks"] = [f.to_dict() for f in self.fallbacks]
        return d


@runtime_checkable
class Strategy(Protocol):
    """One way of splitting a model. `options` names the strategy's own keyword options, each with
    its one-line help; `package` refuses any other."""

    name: str
    summary: str  # one line, for `--help` and the docs
    options: Mapping[str, str]

    def plan(self, job: Job) -> Planned: ...

    def package(self, job: Job, out: Path, *, report: bool = False) -> Packaged: ...


_REGISTRY: dict[str, Strategy] = {}
_loaded = False


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry (called by the strategy's package on import)."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"{strategy!r} does not implement the Strategy protocol")
    _REGISTRY[strategy.name] = strategy
    return strategy


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    here = Path(__file__).parent  # the strategies package, without importing it (it imports this module)
    for m in pkgutil.iter_modules([str(here)]):
        if m.ispkg:
            importlib.import_module(f"{__package__}.{m.name}")


def names() -> tuple[str, ...]:
    """Every registered strategy, in registration order (pipeline first: the default)."""
    _load_builtins()
    order = {"pipeline": 0, "channel": 1}
    return tuple(sorted(_REGISTRY, key=lambda n: (order.get(n, 2), n)))


def get(name: str) -> Strategy:
    """The strategy called `name`; a PlanningError listing the choices for any other."""
    _load_builtins()
    if name not in _REGISTRY:
        raise PlanningError(f"Unknown strategy {name!r}; choose one of: {', '.join(f'`{n}`' for n in names())}.")
    return _REGISTRY[name]


def check_options(strategy: Strategy, options: Mapping[str, Any]) -> None:
    """Refuse an option the strategy does not take, naming the strategies that do."""
    for k, v in options.items():
        if v is None or k in strategy.options:
            continue
        takes = [n for n in names() if k in _REGISTRY[n].options]
        flag = "--" + k.replace("_", "-")
        where = f" applies to {' and '.join(f'--strategy {n}' for n in takes)} only" if takes else " is not an option of any strategy"
        raise PlanningError(f"{flag}{where}, not to --strategy {strategy.name}.")


__all__ = ["Job", "Packaged", "Planned", "Strategy", "StreamedFigures", "check_options", "get", "names", "register"]
