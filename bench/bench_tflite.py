"""TFLite (LiteRT, XNNPACK) against ONNX (onnxruntime, CPU provider) on the same device and model,
side by side, and what float16 costs in answers.

    python bench/bench_tflite.py [--rounds 7] [--runs 20] [--threads 1] [--photos 100]

EfficientNet-Lite0 (224 x 224), the whole model as one step: converted by the packager's converter
(edgepart.packager.tflite, float32 and float16), run by the agent's runners (edgepart.runtime's
onnxruntime session, edgepart.litert's LiteRT session) with the same thread count, in this process
pinned to one core. The runtimes take turns in every round, so each sees the same moments of a
shared machine; the figures are medians over rounds of the median run. Agreement: top-1 of each
TFLite model against onnxruntime on natural-image crops (zoo.imagenet_inputs), and the largest
difference of the logits.

Goal (issue 12): side by side, no target; float16 top-1 agreement >= 99 %. Writes bench/results/tflite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _median_ms(run, feeds, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        run(feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--photos", type=int, default=100)
    a = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    from edgepart.litert import make_tflite_session
    from edgepart.packager.tflite import convert_step
    from edgepart.runtime import choose, make_session
    from edgepart.testing import zoo

    import edgepart.packager as p

    photos = zoo.imagenet_inputs(a.photos)["input"]
    with tempfile.TemporaryDirectory() as tmp:
        # the whole model as the one step of a one-device plan: the file the packager would convert
        (Path(tmp) / "one.yaml").write_text("devices:\n  - {name: dev0, gflops: 10}\n"
                                            "links:\n  default: {bandwidth_mbps: 1000, latency_ms: 0.1}\n")
        res = p.package(zoo.efficientnet_lite0(), Path(tmp) / "one.yaml", out=Path(tmp) / "dist",
                        input_shapes={"input": (1, 3, 224, 224)})
        (step,) = res.plan.steps
        model = res.bundle_dirs["dev0"] / step.model_file
        onnx_sess = make_session(model, choose("cpu"), a.threads)
        out_name = onnx_sess.get_outputs()[0].name
        runners = {"onnxruntime (CPU)": lambda f: onnx_sess.run([out_name], f)}
        sizes = {"onnxruntime (CPU)": sum((res.bundle_dirs["dev0"] / f).stat().st_size for f in step.files())}
        for prec in ("float32", "float16"):
            t = time.perf_counter()
            path, io = convert_step(model, Path(tmp) / prec, precision=prec, calibration=None)
            print(f"converted to TFLite {prec} in {time.perf_counter() - t:.1f} s: {Path(path).stat().st_size / 2**20:.1f} MiB")
            sess = make_tflite_session(path, io, a.threads)
            runners[f"LiteRT {prec}"] = (lambda s: lambda f: s.run([out_name], f))(sess)
            sizes[f"LiteRT {prec}"] = Path(path).stat().st_size

        feeds = {"input": np.ascontiguousarray(photos[:1])}
        for r in runners.values():
            _median_ms(r, feeds, 3)  # warm up
        per: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(a.rounds):
            for k, r in runners.items():
                per[k].append(_median_ms(r, feeds, a.runs))
        ref = [onnx_sess.run([out_name], {"input": photos[i:i + 1]})[0] for i in range(a.photos)]
        agree = {}
        for k, r in runners.items():
            if k.startswith("onnxruntime"):
                continue
            got = [r({"input": np.ascontiguousarray(photos[i:i + 1])})[0] for i in range(a.photos)]
            agree[k] = {"top1": float(np.mean([np.argmax(g) == np.argmax(w) for g, w in zip(got, ref)])),
                        "max_abs_diff": float(max(np.max(np.abs(g - w)) for g, w in zip(got, ref)))}
    base = statistics.median(per["onnxruntime (CPU)"])
    print(f"\nEfficientNet-Lite0, {a.threads} thread(s), one core; medians over {a.rounds} rounds of {a.runs} runs")
    print(f"{'runtime':<22}{'ms':>9}{'vs ORT':>9}{'MiB':>8}  answers against onnxruntime")
    rows = {}
    for k, v in per.items():
        ms = statistics.median(v)
        ag = agree.get(k)
        note = f"top-1 {ag['top1']:.1%} of {a.photos} photos, max abs diff {ag['max_abs_diff']:.2e}" if ag else "-"
        print(f"{k:<22}{ms:>9.2f}{ms / base:>8.2f}x{sizes[k] / 2**20:>8.1f}  {note}")
        rows[k] = {"ms": ms, "rounds_ms": v, "vs_onnxruntime": ms / base, "bytes": sizes[k], **(ag or {})}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tflite.json").write_text(json.dumps({"threads": a.threads, "photos": a.photos, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
