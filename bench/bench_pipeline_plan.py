"""How good is the pipeline planner's compute estimate on this machine?

For each reference model (EfficientNet-Lite0, MiniLM, PP-OCRv4 detector) and 2, 3, 4 devices: the
planning time, and per stage the planner's estimated compute ms next to the measured onnxruntime
time of that stage's emitted sub-model (1 intra-op thread, median after warm-up), and their ratio.

The cluster is calibrated first: this machine's effective GFLOP/s is measured by timing the whole
model (2 * MACs / median time), and every device gets it, so the estimate of the whole model equals
the measurement by construction and the per-stage ratios show how far "time is proportional to
FLOPs" is from the truth for each slice of the network.

    python bench/bench_pipeline_plan.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from edgepart.local import LocalCluster
from edgepart.testing import zoo
from edgepart.packager.model.graph import analyse, load_model
from edgepart.packager.strategies.pipeline.compiler import package, prepare
from edgepart.runtime import make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms  # noqa: E402  (timing shared by every benchmark)

console = Console(width=None if sys.stdout.isatty() else 132)  # a log file gets the whole table


def models() -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    return [
        ("efficientnet-lite0", zoo.efficientnet_lite0(progress=True), zoo.imagenet_inputs(1)),
        ("minilm", zoo.minilm(progress=True), zoo.sentence_inputs(zoo.english_sentences(8))),
        ("ppocr-det", zoo.ppocr_det(progress=True), zoo.ocr_inputs((640, 640))),
    ]


def calibrate(path: Path, feeds: dict, warmup: int, repeats: int) -> tuple[float, float, float]:
    """(GFLOP/s, measured ms, GFLOP) of the whole model, onnxruntime with 1 intra-op thread."""
    graph = analyse(load_model(path), {k: v.shape for k, v in feeds.items()})
    gflop = 2 * graph.total_macs / 1e9
    sess = make_session(path, threads=1)
    ms = median_ms(lambda: sess.run(None, feeds), repeats, warmup)
    return gflop / (ms / 1e3), ms, gflop


def write_cluster(path: Path, n: int, gflops: float) -> Path:
    # identical devices with room to spare and a fast link: the planner balances compute only
    devices = [{"name": f"dev{i}", "gflops": round(gflops, 6), "memory_mb": 8192} for i in range(n)]
    path.write_text(yaml.safe_dump({"devices": devices, "links": {"default": {"bandwidth_mbps": 10000, "latency_ms": 0}}}))
    return path


def bench_split(name: str, path: Path, feeds: dict, n: int, gflops: float, work: Path, warmup: int, repeats: int) -> dict:
    prep = prepare(path, write_cluster(work / f"cluster{n}.yaml", n, gflops), "throughput",
                   {k: v.shape for k, v in feeds.items()})
    dist = work / f"{name}-{n}"
    package(prep.model, prep.graph, prep.cluster, prep.pipeline, dist, model_name=name)
    local = LocalCluster.from_dist(dist, threads=1)
    for _ in range(warmup):
        local.run(feeds)
    local.step_ms.clear()
    for _ in range(repeats):
        local.run(feeds)
    stages = []
    for i, (st, step) in enumerate(zip(prep.pipeline.stages, local.plan.steps)):
        measured = statistics.median(local.step_ms[step.name])
        stages.append({"stage": i, "nodes": [st.start, st.stop], "mflops": st.flops / 1e6,
                       "estimated_ms": st.compute_ms, "measured_ms": measured,
                       "ratio": measured / st.compute_ms if st.compute_ms > 0 else float("nan")})
    return {"model": name, "devices": n, "planning_ms": prep.planning_s * 1e3, "nodes": prep.graph.n, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier figures)")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    warmup, repeats = (2, 5) if args.quick else (5, 30)

    results, calib = [], {}
    with tempfile.TemporaryDirectory(prefix="edgepart-bench-") as tmp:
        for name, path, feeds in models():
            gflops, whole_ms, gflop = calibrate(path, feeds, warmup, repeats)
            calib[name] = {"gflops": gflops, "whole_model_ms": whole_ms, "gflop": gflop,
                           "inputs": {k: list(v.shape) for k, v in feeds.items()}}
            console.print(f"[bold]{name}[/] {calib[name]['inputs']}: {gflop:.3f} GFLOP in {whole_ms:.2f} ms "
                          f"-> this machine does {gflops:.2f} GFLOP/s (1 thread); every device gets that")
            for n in (2, 3, 4):
                results.append(bench_split(name, path, feeds, n, gflops, Path(tmp), warmup, repeats))

    table = Table(title="estimated vs measured stage compute (onnxruntime, 1 intra-op thread, median)", title_justify="left")
    for col in ("model", "devices", "plan ms", "stage", "nodes", "MFLOPs", "estimated ms", "measured ms", "measured/est."):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        for s in r["stages"]:
            first = s["stage"] == 0
            table.add_row(r["model"] if first else "", str(r["devices"]) if first else "",
                          f"{r['planning_ms']:.1f}" if first else "", str(s["stage"]), f"{s['nodes'][0]}–{s['nodes'][1] - 1}",
                          f"{s['mflops']:.1f}", f"{s['estimated_ms']:.2f}", f"{s['measured_ms']:.2f}", f"{s['ratio']:.2f}")
        table.add_section()
    console.print(table)

    summary = Table(title="summary: measured/estimated per stage", title_justify="left")
    for col in ("model", "GFLOP/s", "stages", "median ratio", "min", "max", "sum of stages / whole model", "max plan ms"):
        summary.add_column(col, justify="left" if col == "model" else "right")
    out_summary = {}
    for name in calib:
        rs = [r for r in results if r["model"] == name]
        ratios = [s["ratio"] for r in rs for s in r["stages"]]
        split_ms = [sum(s["measured_ms"] for s in r["stages"]) for r in rs]
        out_summary[name] = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
                             "split_over_whole": [x / calib[name]["whole_model_ms"] for x in split_ms],
                             "max_planning_ms": max(r["planning_ms"] for r in rs)}
        o = out_summary[name]
        summary.add_row(name, f"{calib[name]['gflops']:.2f}", str(len(ratios)), f"{o['median_ratio']:.2f}",
                        f"{o['min_ratio']:.2f}", f"{o['max_ratio']:.2f}",
                        " ".join(f"{x:.2f}" for x in o["split_over_whole"]), f"{o['max_planning_ms']:.1f}")
    console.print(summary)
    if args.json:
        args.json.write_text(json.dumps({"calibration": calib, "results": results, "summary": out_summary,
                                         "quick": args.quick}, indent=1))
        console.print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
