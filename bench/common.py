"""Shared pieces of the benchmarks: the reference split, timing, and writing results."""

from __future__ import annotations

import json
import os
import statistics

import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def efficientnet_block8_split(out_dir: Path, objective: str = "latency") -> tuple[Path, dict]:
    """EfficientNet-Lite0 cut right after block 8 (one [1,112,14,14] float32 tensor crosses), 2 devices."""
    from edgepart.testing import zoo
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.cost import CostModel
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.strategies.pipeline.planner import evaluate

    path = zoo.efficientnet_lite0()
    model = load_model(path)
    graph = analyse(model, {"input": (1, 3, 224, 224)})
    cluster = cluster_from_dict({"devices": [{"name": "device-a", "gflops": 10}, {"name": "device-b", "gflops": 10}],
                                 "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}})
    cut = None
    for c in range(1, graph.n):
        big = [t for t in graph.crossing(c) if graph.tensor_bytes.get(t, 0) > 64]
        if len(big) == 1 and graph.tensor_bytes[big[0]] == 112 * 14 * 14 * 4 and graph.specs[big[0]].shape[1] == 112:
            cut = c
            break
    assert cut is not None, "no cut with exactly one [1,112,14,14] tensor crossing"
    pp = evaluate(CostModel(graph, cluster), (cut,), ("device-a", "device-b"), objective)
    package(model, graph, cluster, pp, out_dir, model_name="efficientnet-lite0-block8")
    crossing = {t: graph.tensor_bytes[t] for t in graph.crossing(cut)}
    return path, {"cut": cut, "crossing_bytes": crossing}


def median_ms(fn, n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return p


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 224, 224)).astype(np.float32)





def package_cut(model_path: Path, out_dir: Path, input_shapes: dict, cut: int, devices=("device-a", "device-b")) -> dict:
    """Package `model_path` for 2 devices with the cut at node `cut` (no planning)."""
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.cost import CostModel
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.strategies.pipeline.planner import evaluate

    model = load_model(model_path)
    graph = analyse(model, input_shapes)
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": 10} for d in devices],
                                 "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}})
    pp = evaluate(CostModel(graph, cluster), (cut,), tuple(devices))
    package(model, graph, cluster, pp, out_dir, model_name=Path(model_path).stem)
    return {t: graph.tensor_bytes[t] for t in graph.crossing(cut)}


def wire_model(path: Path, n_floats: int) -> Path:
    """x[n] -> Slice(x, 0:1): the bulk tensor crosses the wire into an agent, which does O(1) work
    on it (a view of the received frame) and answers with one float."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Slice", ["x", "starts", "ends"], ["z"])],
        "wire",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n_floats])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [helper.make_tensor("starts", TensorProto.INT64, [1], [0]), helper.make_tensor("ends", TensorProto.INT64, [1], [1])],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def package_one(model_path: Path, out_dir: Path, input_shapes: dict, device: str = "device-b") -> None:
    """Package `model_path` whole for one device."""
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.strategies.pipeline.planner import plan_pipeline

    model = load_model(model_path)
    graph = analyse(model, input_shapes)
    cluster = cluster_from_dict({"devices": [{"name": device, "gflops": 10}]})
    package(model, graph, cluster, plan_pipeline(graph, cluster), out_dir, model_name=Path(model_path).stem)


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far, all its threads (packager/calibrate.py, from /proc)."""
    from edgepart.packager.calibrate import cpu_s as of

    return of(pid)


def self_cpu_s() -> float:
    """CPU seconds this process has used so far, all its threads."""
    t = os.times()
    return t.user + t.system
