"""One model, four ways to run it, over a 50 Mbit/s link (issue 4): one table.

    .venv/bin/python bench/bench_strategies.py                      # digits CNN and EfficientNet-Lite0
    .venv/bin/python bench/bench_strategies.py --models digits --rate 50 --budget 0.15

For each model, on 2 emulated hosts (network namespaces, a tc tbf-shaped link of --rate Mbit/s
each way): the caller runs on host 0 and embeds dev0's agent (the camera-holding device computes),
dev1 is an `edgepart run` process on host 1; each device pinned to its own core, 1 thread.

  one device      the whole model in one onnxruntime session on host 0, no network
  best pipeline   the 2-stage layer-wise split with the lowest estimated latency, dev0 first (the
                  caller is on dev0's host; the planner itself does not model where inputs come from)
  dense channel   every layer split by output channels, dense weights (docs/channel.md)
  sparse channel  RePurpose at --budget (digits: prune 0.15; EfficientNet: lowrank 0.4), then the
                  channel split (docs/sparse.md)
  replicated channel  (EfficientNet, --replicate 0.15) the first layers computed whole on both
                  devices (RePurpose's exact rewrite, +12 % MACs each), then the channel split

Reported: median single-request latency (measured), the packager's estimate, bytes crossing
between devices and from the caller per inference, and fidelity (the sparse split's top-1 agreement
with the unsplit model on held-out inputs; the exact splits' max abs diff of the measured answer).
The device speed in the cluster is calibrated on this machine (whole model, 1 thread).
Results go to bench/results/strategies.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
from common import REPO, median_ms, save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=150)
CLIENT = REPO / "bench" / "strategies_client.py"


def caller_bytes(plan, local: str = "dev0") -> int:
    """Bytes per inference between the caller and devices other than `local` (which the caller's
    process embeds): model inputs and outputs, whose shapes the plan holds (batch 1)."""
    from edgepart.plan import CALLER

    specs = {s.name: s for s in (*plan.inputs, *plan.outputs)}

    def nbytes(name: str) -> int:
        s = specs[name]
        return int(np.prod([d if isinstance(d, int) else 1 for d in s.shape])) * np.dtype(s.dtype).itemsize

    return sum(nbytes(r.tensor) for r in plan.routes if CALLER in (r.src, r.dst) and local not in (r.src, r.dst))


def run_ort(model, x: np.ndarray, name: str) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def build(name: str, model, shapes: dict, calib: dict, budget: float, method: str, rate: float, work: Path,
          replicate: float = 0.0) -> dict:
    """Package the model four ways for dev0 + dev1 at `rate` Mbit/s; returns dists and estimates."""
    import onnx

    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.cost import CostModel
    from edgepart.packager.strategies.pipeline.planner import evaluate
    from edgepart.packager.strategies.channel.restructure import replicate as replicate_first
    from edgepart.packager.strategies.channel.restructure import repurpose
    from edgepart.runtime import make_session

    whole = work / f"{name}.onnx"
    onnx.save(model, whole)
    graph = analyse(model, shapes)
    x1 = {k: np.ascontiguousarray(v[:1]) for k, v in calib.items()}
    sess = make_session(str(whole), threads=1)
    ms = median_ms(lambda: sess.run(None, x1), 30)
    gflops = 2 * graph.total_macs / 1e9 / (ms / 1e3)
    cluster = cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": round(gflops, 4), "memory_mb": 8192} for i in range(2)],
                                 "links": {"default": {"bandwidth_mbps": rate, "latency_ms": 0.2}}})
    out = {"whole": whole, "gflops": gflops, "whole_ms_here": ms, "dists": {}}
    # The caller (camera) is on dev0's host, which the planner does not model (it charges no input
    # transfer): the best pipeline is the cut with the lowest estimated latency with dev0 first.
    cost = CostModel(graph, cluster)
    pp = min((evaluate(cost, (c,), ("dev0", "dev1")) for c in range(1, graph.n)), key=lambda p: p.latency_ms)
    res = package(model, graph, cluster, pp, work / "pipeline", model_name=f"{name}-pipeline")
    out["dists"]["best pipeline"] = (work / "pipeline", res.plan, pp.latency_ms, None,
                                     sum(graph.tensor_bytes[t] for st in pp.stages[:-1] for t in graph.crossing(st.stop)))
    console.print("  best pipeline: " + ", ".join(f"{s.device} {s.stop - s.start} nodes" for s in pp.stages))
    res = package_channel(model, graph, cluster, work / "dense", None, model_name=f"{name}-dense")
    out["dists"]["dense channel"] = (work / "dense", res.plan, dict(res.plan.estimates)["latency_ms"], None,
                                     res.report.cross_device_bytes)
    t = time.perf_counter()
    r = repurpose(model, calib, 2, budget, method=method,
                  **({"max_positions": 8192, "batch_size": 16} if name == "efficientnet-lite0" else {}))
    console.print(f"  RePurpose ({method}) {name} at budget {budget}: {r.report.ratio:.2f}x fewer bytes in the split layers "
                  f"({time.perf_counter() - t:.0f} s)")
    res = package_channel(r.model, analyse(r.model, shapes), cluster, work / "sparse", r.partition, model_name=f"{name}-sparse")
    out["dists"]["sparse channel"] = (work / "sparse", res.plan, dict(res.plan.estimates)["latency_ms"], r.model,
                                      res.report.cross_device_bytes)
    if replicate:
        r = replicate_first(model, 2, replicate, input_shapes=shapes)
        console.print(f"  {r.report.summary()}")
        res = package_channel(r.model, analyse(r.model, shapes), cluster, work / "replicated", r.partition,
                              model_name=f"{name}-replicated")
        out["dists"]["replicated channel"] = (work / "replicated", res.plan, dict(res.plan.estimates)["latency_ms"], None,
                                              res.report.cross_device_bytes)
    return out


def measure(name: str, built: dict, feeds: dict, rate: float, n: int, work: Path) -> list[dict]:
    from edgepart.testing import netns
    from edgepart.testing.emulate import AgentProcesses

    why = netns.available()
    if why:
        raise SystemExit(f"this benchmark needs network namespaces: {why}")
    inputs = work / f"{name}-inputs.npz"
    np.savez(inputs, **feeds)
    rows = []
    with netns.EmulatedLan(2, rate_mbit=rate) as lan:
        caller, far = lan.hosts

        def client(argv: list[str], out: Path) -> tuple[float, dict]:
            res = caller.run(["taskset", "-c", "0", sys.executable, str(CLIENT), *argv, str(inputs), str(n), str(out)],
                             timeout_s=600, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"client failed:\n{res.stdout}\n{res.stderr}")
            return json.loads(res.stdout.strip().splitlines()[-1])["latency_ms"], dict(np.load(out))

        lat, ref = client(["--one", str(built["whole"])], work / f"{name}-one.npz")
        rows.append({"model": name, "strategy": "one device", "latency_ms": lat, "estimate_ms": built["whole_ms_here"],
                     "device_bytes": 0, "caller_bytes": 0, "max_abs_diff": 0.0})
        for strategy, (dist, plan, est, restructured, dev_bytes) in built["dists"].items():
            procs = AgentProcesses(dist, hosts={"dev1": far}, devices=["dev1"], threads=1, cpus={"dev1": 1}).start()
            try:
                lat, got = client([str(dist), caller.ip], work / f"{name}-{strategy.replace(' ', '-')}.npz")
            finally:
                procs.stop()
            want = ref
            if restructured is not None:  # compare with the restructured model: the split itself is exact
                (x_name, x), = feeds.items()
                want = {next(iter(ref)): run_ort(restructured, x, x_name)}
            diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
            rows.append({"model": name, "strategy": strategy, "latency_ms": lat, "estimate_ms": est,
                         "device_bytes": dev_bytes, "caller_bytes": caller_bytes(plan), "max_abs_diff": diff})
    return rows


def digits_case(budget: float):
    from digits_cnn import digits_cnn

    model, data = digits_cnn()
    acc = lambda m: float((run_ort(m, data.x_test, "x").argmax(1) == data.y_test).mean())  # noqa: E731
    return model, {"x": (1, 1, 8, 8)}, {"x": data.x_train}, {"x": data.x_test[:1]}, \
        lambda m: {"accuracy": acc(m), "accuracy_unsplit": acc(model)}


def efficientnet_case(budget: float):
    from bench_sparse import photo_crops

    from edgepart.testing import zoo
    from edgepart.packager.model.graph import load_model

    model = load_model(zoo.efficientnet_lite0())
    evals = photo_crops(200, seed=2)
    want = run_ort(model, evals, "input").argmax(1)
    return model, {"input": (1, 3, 224, 224)}, {"input": photo_crops(256, seed=1)}, {"input": evals[:1]}, \
        lambda m: {"top1_agreement": float((run_ort(m, evals, "input").argmax(1) == want).mean())}


# model -> (case, RePurpose budget, method): the digits CNN's 3x3 convs prune well; EfficientNet-Lite0's
# 1x1 convs keep more per byte with low-rank projections (docs/sparse.md)
CASES = {"digits": (digits_case, 0.15, "prune"), "efficientnet-lite0": (efficientnet_case, 0.4, "lowrank")}
REPLICATE = {"efficientnet-lite0": 0.15}  # the first 4 blocks (112x112, 56x56) on both devices: 6.8x fewer bytes, exact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--rate", type=float, default=50.0, help="link rate, Mbit/s (tc tbf)")
    ap.add_argument("--budget", type=float, default=None, help="RePurpose budget (default per model: digits 0.15, EfficientNet 0.4)")
    ap.add_argument("-n", type=int, default=20, help="requests timed per strategy (median)")
    ap.add_argument("--replicate", type=float, default=None, help="also the channel split with the first layers "
                    "replicated up to this fraction of MACs extra per device (default: EfficientNet 0.15, digits none)")
    a = ap.parse_args()
    rows: list[dict] = []
    for name in a.models.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(CASES)}")
        case, budget, method = CASES[name]
        budget = a.budget if a.budget is not None else budget
        console.print(f"[bold]{name}[/]: packaging 4 ways for 2 devices at {a.rate:g} Mbit/s")
        with tempfile.TemporaryDirectory() as tmp:
            model, shapes, calib, feeds, fidelity = case(budget)
            rep = a.replicate if a.replicate is not None else REPLICATE.get(name, 0.0)
            built = build(name, model, shapes, calib, budget, method, a.rate, Path(tmp), rep)
            got = measure(name, built, feeds, a.rate, a.n, Path(tmp))
            fid = fidelity(built["dists"]["sparse channel"][3])
            for r in got:
                r["budget"] = f"{method} {budget:g}" if r["strategy"] == "sparse channel" else \
                    f"+{rep:g} MACs" if r["strategy"] == "replicated channel" else None
                r["fidelity"] = fid if r["strategy"] == "sparse channel" else None
            rows += got
    t = Table(title=f"latency per request over a {a.rate:g} Mbit/s link, 2 devices (1 core, 1 thread each)", title_justify="left")
    for c in ("model", "strategy", "measured ms", "estimated ms", "bytes dev<->dev", "bytes caller<->dev1", "fidelity"):
        t.add_column(c, justify="left" if c in ("model", "strategy", "fidelity") else "right")
    for r in rows:
        fid = ", ".join(f"{k} {v:.4f}" for k, v in r["fidelity"].items()) if r["fidelity"] else f"max abs diff {r['max_abs_diff']:.1e}"
        t.add_row(r["model"], r["strategy"] + (f" ({r['budget']})" if r["budget"] else ""),
                  f"{r['latency_ms']:.2f}", f"{r['estimate_ms']:.2f}", f"{r['device_bytes']:,}", f"{r['caller_bytes']:,}", fid)
    console.print(t)
    console.print(f"wrote {save('strategies', {'rate_mbit': a.rate, 'rows': rows})}")


if __name__ == "__main__":
    main()
