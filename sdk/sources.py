"""Data sources: the cameras (or microphones, sensors) that feed one set of devices, each with a
priority (docs/priority.md).

    schema: 1                          # optional; this edgepart reads schema 1
    sources:
      - {name: door, device: jetson-a, priority: 10, rate_hz: 5, deadline_ms: 250}
      - {name: yard, device: pi-b, priority: 1, rate_hz: 2}

A source sits on one device of the cluster (its frames start there), has a priority weight (> 0;
larger is more urgent), an expected rate in frames per second (> 0) and an optional deadline in ms.
These are pure, frozen values: the packager plans with them, and a plan will carry them to the
agents (which do not read them yet). Reading the YAML file is the packager's
(`edgepart.packager.sources.load_sources`): a device never reads YAML. Every malformed value is a
`SourcesError` that says where and what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from edgepart.errors import SourcesError

SOURCES_SCHEMA = 1
_KEYS = ("name", "device", "priority", "rate_hz", "deadline_ms")


@dataclass(frozen=True)
class Source:
    """One data source: where its requests start, how much they matter, how often they come."""

    name: str
    device: str
    priority: float  # weight > 0; larger is served first (docs/priority.md, "The rule")
    rate_hz: float  # expected requests per second > 0
    deadline_ms: float | None = None  # a request expected to finish later is refused at once

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "device": self.device, "priority": self.priority,
                             "rate_hz": self.rate_hz}
        if self.deadline_ms is not None:
            d["deadline_ms"] = self.deadline_ms
        return d


@dataclass(frozen=True)
class Sources:
    """Every source of a deployment, in the order written, with the schema version they were read at."""

    sources: tuple[Source, ...]
    schema: int = SOURCES_SCHEMA

    def __iter__(self):
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    def get(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise SourcesError(f"No source is named {name!r}; the sources are {', '.join(self.names) or 'none'}.")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "sources": [s.to_dict() for s in self.sources]}


def sources_from_dict(data: Any, devices: Iterable[str] | None = None, where: str = "sources") -> Sources:
    """Sources from their mapping (sources.yaml's content, or a plan's JSON). `devices`: the cluster's
    device names, which every source's device must be one of (None: not checked)."""
    known = None if devices is None else list(devices)
    if not isinstance(data, dict):
        raise SourcesError(f"{where}: expected a mapping with 'sources' (a list of {{name, device, priority, "
                           f"rate_hz}}); docs/priority.md has an example.")
    extra = set(map(str, data)) - {"schema", "sources"}
    if extra:
        raise SourcesError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: schema, sources.")
    schema = data.get("schema", SOURCES_SCHEMA)
    if schema != SOURCES_SCHEMA:
        raise SourcesError(f"{where}: schema {schema!r} is not one this edgepart reads ({SOURCES_SCHEMA}); "
                           f"write `schema: {SOURCES_SCHEMA}` or leave it out.")
    raw = data.get("sources")
    if not isinstance(raw, list) or not raw:
        raise SourcesError(f"{where}: 'sources' must be a non-empty list of {{name, device, priority, rate_hz}}.")
    out: list[Source] = []
    for i, s in enumerate(raw):
        at = f"{where}: sources[{i}]"
        if not isinstance(s, dict):
            raise SourcesError(f"{at} must be a mapping with name, device, priority and rate_hz.")
        extra = set(map(str, s)) - set(_KEYS)
        if extra:
            raise SourcesError(f"{at}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(_KEYS)}.")
        missing = [k for k in _KEYS[:4] if k not in s]
        if missing:
            raise SourcesError(f"{at} lacks {', '.join(missing)} (every source needs name, device, priority "
                               f"and rate_hz; deadline_ms is optional).")
        name, device = s["name"], s["device"]
        if not isinstance(name, str) or not name:
            raise SourcesError(f"{at}.name must be a non-empty string, not {name!r}.")
        at = f"{where}: source {name!r}"
        if not isinstance(device, str) or not device:
            raise SourcesError(f"{at}: device must be the name of a device of the cluster, not {device!r}.")
        if known is not None and device not in known:
            raise SourcesError(f"{at} sits on {device!r}, which is not a device of the cluster "
                               f"({', '.join(known)}).")
        deadline = s.get("deadline_ms")
        out.append(Source(name, device, _positive(s["priority"], f"{at}: priority (a weight; larger is more urgent)"),
                          _positive(s["rate_hz"], f"{at}: rate_hz (expected frames per second)"),
                          None if deadline is None else _positive(deadline, f"{at}: deadline_ms")))
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SourcesError(f"{where}: source names must be unique; repeated: {', '.join(dup)}.")
    return Sources(tuple(out), SOURCES_SCHEMA)


def _positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
        raise SourcesError(f"{what} must be a positive number, not {v!r}.")
    return float(v)


__all__ = ["SOURCES_SCHEMA", "Source", "Sources", "sources_from_dict"]
