"""Prove a split is exact: run the bundles' steps chained in process and compare with the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from edgepart.bundle import load_dist
from edgepart.errors import BundleError
from edgepart.local import LocalCluster
from edgepart.runtime import make_session

from edgepart.packager.model.graph import model_sha256, load_model


@dataclass(frozen=True)
class Verification:
    max_abs_diff: dict[str, float]
    atol: float
    plan_id: str
    model_matches_plan: bool

    @property
    def ok(self) -> bool:
        return all(v <= self.atol for v in self.max_abs_diff.values())

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "atol": self.atol,
            "plan_id": self.plan_id,
            "model_matches_plan": self.model_matches_plan,
            "outputs": {k: {"max_abs_diff": v} for k, v in self.max_abs_diff.items()},
        }


def verify(dist: Path | str, model_path: Path | str, feeds: Mapping[str, np.ndarray], atol: float = 1e-5) -> Verification:
    """Max absolute difference per output between the chained bundles and the original model."""
    model = load_model(model_path)
    bundles = load_dist(dist)
    plan = next(iter(bundles.values())).plan
    original = make_session(model_path)
    want = [o.name for o in plan.outputs]
    have = {o.name for o in original.get_outputs()}
    if set(want) - have:
        raise BundleError(f"The bundles in {dist} compute {', '.join(want)}, but {model_path} has outputs "
                          f"{', '.join(sorted(have))}: they are not from this model.")
    takes = {i.name: i.shape for i in original.get_inputs()}
    for spec in plan.inputs:
        shape = takes.get(spec.name)
        if shape is None or len(shape) != len(spec.shape) or any(
                _fixed(a) and _fixed(b) and a != b for a, b in zip(spec.shape, shape)):
            raise BundleError(f"The bundles in {dist} take {spec.name} {list(spec.shape)}, but {model_path} takes "
                              f"{', '.join(f'{k} {v}' for k, v in takes.items())}: they are not from this model. "
                              f"Give the model that was packaged with --model.")
    try:
        expected = dict(zip(want, original.run(want, dict(feeds))))
    except Exception as e:  # onnxruntime's errors are untyped
        raise BundleError(f"{model_path} cannot run on these inputs ({str(e).strip().splitlines()[0][:300]}). "
                          f"Give the model that was packaged, and inputs it takes.") from None
    got = LocalCluster.from_bundles(bundles).run(feeds)
    diffs = {k: max_abs_diff(expected[k], got[k]) for k in want}
    return Verification(diffs, atol, plan.plan_id, model_sha256(model) == plan.model_sha256)


def max_abs_diff(a, b) -> float:
    """The largest absolute difference between two outputs, in float64; inf when their shapes differ.
    `verify` and the report's fidelity both judge the bundles against the model with it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _fixed(d) -> bool:
    """A fixed size; onnxruntime reports PaddlePaddle's dynamic `-1` axes as -1 or None."""
    return isinstance(d, int) and d > 0
