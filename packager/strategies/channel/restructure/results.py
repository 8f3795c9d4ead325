"""What a restructuring hands back: the restructured model, its partition, and its report
(RePurpose's and low-rank's alike; docs/sparse.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx

from edgepart.packager.strategies.channel._layout import BytesReport


@dataclass(frozen=True)
class LayerReport:
    """One Conv/Gemm/MatMul layer, every step measured on the calibration inputs."""

    node: str
    output: str
    in_channels: int
    out_channels: int
    dense_bytes: int  # its input's bytes crossing devices in the dense channel split, per inference
    used_bytes: int  # after pruning
    inside_default: float  # share of its weight strength |W| x rms(x) inside a device, contiguous blocks
    inside_assigned: float  # the same after the assignment (nan: its input is not split)
    error_pruned: float  # relative output error ||y' - y|| / ||y||, its own (pruned-model) inputs, before adjust
    error: float  # the same at the end (after adjust, if it ran)


@dataclass(frozen=True)
class SparseReport:
    n_devices: int
    comm_budget: float
    steps: tuple[str, ...]
    layers: tuple[LayerReport, ...]
    bytes: BytesReport  # channel_bytes of the result: dense vs used, per split layer

    @property
    def dense_bytes(self) -> int:
        return self.bytes.dense_bytes

    @property
    def used_bytes(self) -> int:
        return self.bytes.used_bytes

    @property
    def ratio(self) -> float:
        return self.bytes.ratio

    def to_dict(self) -> dict:
        return {"n_devices": self.n_devices, "comm_budget": self.comm_budget, "steps": list(self.steps),
                "dense_bytes": self.dense_bytes, "used_bytes": self.used_bytes, "ratio": self.ratio,
                "layers": [x.__dict__ for x in self.layers]}

    def table(self) -> str:
        """Plain-text table, one row per layer."""
        rows = [f"{'layer':<34} {'dense B':>8} {'used B':>7} {'in-dev def':>10} {'in-dev asg':>10} "
                f"{'err pruned':>10} {'err final':>9}"]
        for x in self.layers:
            rows.append(f"{x.node[-34:]:<34} {x.dense_bytes:>8} {x.used_bytes:>7} {x.inside_default:>10.3f} "
                        f"{x.inside_assigned:>10.3f} {x.error_pruned:>10.4f} {x.error:>9.4f}")
        rows.append(f"{'total':<34} {self.dense_bytes:>8} {self.used_bytes:>7}   ratio {self.ratio:.2f}x")
        return "\n".join(rows)


class Repurposed(NamedTuple):
    model: onnx.ModelProto  # the restructured model: zeroed cross-device blocks, adjusted weights
    partition: dict[str, np.ndarray]  # for package_channel / channel_bytes
    report: SparseReport
