"""Sparse channel splits (issue 4): bytes crossing devices vs accuracy, per method.

    .venv/bin/python bench/bench_sparse.py                    # digits CNN, 2 and 4 devices (~1 min)
    .venv/bin/python bench/bench_sparse.py --efficientnet     # + EfficientNet-Lite0, 2 devices (~25 min)
    .venv/bin/python bench/bench_sparse.py --minilm           # + MiniLM, 2 devices (~15 min)

Digits CNN (trained here, seeded): the ablation at one budget — magnitude pruning; the assignment
added ("assign only", still |W| pruning, no refit); activation-aware pruning ("assign+prune");
pruning with the refit but no assignment ("prune+adjust"); full RePurpose; DISCO (the trained CNN
trained on with the group-lasso penalty, 40 epochs) and DISCO from scratch (70 epochs) — and full
RePurpose over a range of budgets. Bytes are per
image: "split" counts the inputs of the split layers (the budget's measure, `channel_bytes`),
"routes" every route between devices in the compiled plan (classifier partial sums included).

EfficientNet-Lite0 (ImageNet weights), 2 devices, RePurpose only (methods prune and lowrank, and
replicating the first layers on both devices, alone (exact) and before lowrank): top-1
agreement with the unsplit model vs bytes crossing, on 500 random crops, scales and flips of
scikit-learn's two sample photos (calibrated on 256 other crops); and, for comparison, no
restructuring but fp16 / int8 codecs on the exact split's routes. "vs dense" is against the dense
channel split (each device receives the input channels it reads); the compiler's exact split with
partial sums is printed alongside.

MiniLM (all-MiniLM-L6-v2), 2 devices, RePurpose: cosine similarity of the sentence embeddings with
the unsplit model on 300 English sentences vs bytes crossing, calibrated on other docstring text.

Results go to bench/results/sparse.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
from digits_cnn import digits_net  # noqa: E402  (the one definition of the digits CNN)

from common import RESULTS, save  # noqa: E402

BUDGET = 0.15


def cluster(n: int):
    from edgepart.packager.cluster import cluster_from_dict

    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": 5} for i in range(n)],
                              "links": {"default": {"bandwidth_mbps": 50, "latency_ms": 1}}})


def run(model, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = feeds[name]
    return np.concatenate([sess.run(None, {name: x[i:i + 64]})[0] for i in range(0, len(x), 64)])


def routes_bytes(model, shapes, partition, n) -> int:
    from edgepart.packager.channel import compile_channel
    from edgepart.packager.graph import analyse

    return compile_channel(model, analyse(model, shapes), cluster(n), partition).report.cross_device_bytes


def trained_net(model):
    """digits_net() holding the trained weights of the ONNX digits CNN (same parameter names)."""
    import torch
    from onnx import numpy_helper

    net = digits_net()
    net.load_state_dict({i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
                         if i.name in net.state_dict()})
    return net


def bench_digits() -> dict:
    import torch
    from digits_cnn import digits_cnn

    from edgepart.packager.channel import channel_bytes, compile_channel
    from edgepart.packager.graph import analyse
    from edgepart.packager.sparse import repurpose
    from edgepart.packager.sparse.disco import disco_train

    torch.set_num_threads(2)
    model, data = digits_cnn()
    shapes = {"x": (1, 1, 8, 8)}
    calib = {"x": data.x_train}
    test = {"x": data.x_test}
    acc_whole = float((run(model, test).argmax(1) == data.y_test).mean())
    methods = {
        "magnitude prune": dict(steps=("prune",), selection="magnitude"),
        "assign only": dict(steps=("assign", "prune"), selection="magnitude"),
        "assign+prune": dict(steps=("assign", "prune")),
        "prune+adjust": dict(steps=("prune", "adjust")),
        "full RePurpose": dict(),
    }
    rows = []
    print(f"\ndigits CNN, unsplit test accuracy {acc_whole:.4f}; budget {BUDGET} of the dense split's bytes")
    head = f"{'devices':>7}  {'method':<16} {'split B':>8} {'vs dense':>8} {'routes B':>8} {'vs dense':>8} " \
           f"{'accuracy':>8} {'Δ pts':>6} {'time s':>6}"
    print(head)
    dense = {n: channel_bytes(analyse(model, shapes), None, model, n) for n in (2, 4)}
    dense_routes = {n: routes_bytes(model, shapes, None, n) for n in (2, 4)}

    def row(n, name, m, part, used, seconds, budget=BUDGET):
        acc = float((run(m, test).argmax(1) == data.y_test).mean())
        r = routes_bytes(m, shapes, part, n)
        rec = {"devices": n, "method": name, "budget": budget, "split_bytes": used,
               "split_dense_bytes": dense[n].dense_bytes, "split_ratio": dense[n].dense_bytes / max(used, 1),
               "routes_bytes": r, "routes_dense_bytes": dense_routes[n], "routes_ratio": dense_routes[n] / max(r, 1),
               "accuracy": acc, "accuracy_unsplit": acc_whole, "seconds": round(seconds, 2)}
        rows.append(rec)
        print(f"{n:>7}  {name:<16} {used:>8} {rec['split_ratio']:>7.2f}x {r:>8} {rec['routes_ratio']:>7.2f}x "
              f"{acc:>8.4f} {100 * (acc - acc_whole):>+6.2f} {seconds:>6.1f}")

    def compute(d, n):
        """What each DISCO split computes: its split layers' MACs, and all the compiled devices'."""
        compiled = sum(dict(compile_channel(d.model, analyse(d.model, shapes), cluster(n), d.partition).report.macs).values())
        print(f"{'':>9}(split layers {d.report.macs[0]:,} -> {d.report.macs[1]:,} MACs; all devices {compiled:,} "
              f"MACs per image)")
        rows[-1]["macs_split_layers"], rows[-1]["macs_compiled"] = list(d.report.macs), int(compiled)

    for n in (2, 4):
        row(n, "dense split", model, None, dense[n].used_bytes, 0.0, 1.0)
        for name, kw in methods.items():
            t = time.perf_counter()
            r = repurpose(model, calib, n, BUDGET, **kw)
            row(n, name, r.model, r.partition, r.report.used_bytes, time.perf_counter() - t)
        t = time.perf_counter()
        d = disco_train(trained_net(model), n, (data.x_train, data.y_train), example_input=torch.zeros(1, 1, 8, 8),
                        output_names=("logits",), budget=BUDGET, lam=3.0, epochs=20, finetune_epochs=20,
                        lr=3e-3, finetune_lr=3e-3, seed=0)
        row(n, "DISCO", d.model, d.partition, d.report.bytes.used_bytes, time.perf_counter() - t)
        compute(d, n)
        t = time.perf_counter()
        d = disco_train(trained_net(model), n, (data.x_train, data.y_train), example_input=torch.zeros(1, 1, 8, 8),
                        output_names=("logits",), budget=BUDGET, lam=3.0, epochs=20, finetune_epochs=20,
                        lr=3e-3, finetune_lr=3e-3, seed=0, within_keep=0.5)
        row(n, "DISCO within 0.5", d.model, d.partition, d.report.bytes.used_bytes, time.perf_counter() - t)
        compute(d, n)
        t = time.perf_counter()
        torch.manual_seed(0)
        d = disco_train(digits_net(), n, (data.x_train, data.y_train), example_input=torch.zeros(1, 1, 8, 8),
                        output_names=("logits",), budget=BUDGET, lam=1.0, epochs=40, finetune_epochs=30,
                        lr=1e-2, finetune_lr=1e-2, seed=0)
        row(n, "DISCO scratch", d.model, d.partition, d.report.bytes.used_bytes, time.perf_counter() - t)
    print("\nfull RePurpose over budgets")
    print(head)
    for n in (2, 4):
        for budget in (0.02, 0.05, 0.1, 0.2, 0.3):
            t = time.perf_counter()
            r = repurpose(model, calib, n, budget)
            row(n, f"budget {budget}", r.model, r.partition, r.report.used_bytes, time.perf_counter() - t, budget)
    return {"digits": rows}


def photo_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """[n, 3, size, size]: random scales, crops and flips of scikit-learn's two photos, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from edgepart.packager.zoo import IMAGENET_MEAN, IMAGENET_STD

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        short = int(size * rng.uniform(1.0, 3.5))
        w, h = img.size
        r = img.resize((max(size, round(w * short / min(w, h))), max(size, round(h * short / min(w, h)))),
                       Image.BILINEAR)
        y, x = rng.integers(0, r.size[1] - size + 1), rng.integers(0, r.size[0] - size + 1)
        crop = np.asarray(r)[y:y + size, x:x + size].astype(np.float32) / 255.0
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = ((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


REPLICATE = 0.05  # each device computes at most 5 % of the model's MACs beyond its share: the stem and block 0
REPLICATE_MORE = 0.15  # ... 15 %: blocks 0-3 (112x112 and 56x56)


def bench_efficientnet(runs=(("lowrank", 0.4, 0.0), ("lowrank", 0.36, 0.0), ("lowrank", 0.33, 0.0), ("prune", 0.33, 0.0),
                             ("replicate", None, REPLICATE), ("lowrank", 0.25, REPLICATE), ("lowrank", 0.2, REPLICATE),
                             ("replicate", None, REPLICATE_MORE), ("lowrank", 0.12, REPLICATE_MORE)), n_eval: int = 500,
                       n_calib: int = 256, codec_evals: int = 200, codec_budget: float = 0.4) -> dict:
    from edgepart.packager import zoo
    from edgepart.packager.channel import channel_bytes
    from edgepart.packager.graph import analyse, load_model
    from edgepart.packager.sparse import replicate, repurpose

    model = load_model(zoo.efficientnet_lite0())
    shapes = {"input": (1, 3, 224, 224)}
    calib = {"input": photo_crops(n_calib, seed=1)}
    evals = {"input": photo_crops(n_eval, seed=2)}
    want = run(model, evals).argmax(1)
    dense = channel_bytes(analyse(model, shapes), None, model, 2)
    dense_routes = routes_bytes(model, shapes, None, 2)
    print(f"\nEfficientNet-Lite0, 2 devices: dense split {dense.dense_bytes} B in split layers (the exact compile, with "
          f"partial sums, sends {dense.sent_bytes} B there, {dense.dense_bytes / dense.sent_bytes:.2f}x fewer), "
          f"{dense_routes} B on all routes per image; {n_eval} evaluation crops ({len(set(want.tolist()))} distinct top-1 classes)")
    print(f"{'method':>8} {'budget':>6} {'split B':>9} {'vs dense':>8} {'routes B':>9} {'top-1 agree':>11} {'time s':>7}"
          f"  (rep: the first layers replicated on both devices first, +MACs per device)")
    rows = []
    for method, budget, rep in runs:
        t = time.perf_counter()
        if method == "replicate":  # exact: no calibration, no budget
            r = replicate(model, 2, rep, input_shapes=shapes)
        else:
            r = repurpose(model, calib, 2, budget, max_positions=8192, batch_size=16, replicate=rep,
                          **({"ridge": 1e-3} if method == "prune" else {}), method=method)
        seconds = time.perf_counter() - t
        reprep = r.report if method == "replicate" else getattr(r.report, "replicated", None)
        label = f"rep{rep:g}+{method}" if rep and method != "replicate" else method
        agree = float((run(r.model, evals).argmax(1) == want).mean())
        routes = routes_bytes(r.model, shapes, r.partition, 2)
        used = channel_bytes(analyse(r.model, shapes), r.partition, r.model, 2).sent_bytes
        rec = {"method": label, "budget": budget, "replicate": rep, "split_bytes": used,
               "split_dense_bytes": dense.dense_bytes, "split_ratio": dense.dense_bytes / max(used, 1), "routes_bytes": routes,
               "routes_dense_bytes_exact_compile": dense_routes, "top1_agreement": agree, "seconds": round(seconds, 1),
               "extra_macs_per_device": reprep.extra_fraction if reprep else 0.0}
        rows.append(rec)
        extra = f"  rep +{reprep.extra_fraction:.1%} MACs ({len(reprep.nodes)} nodes)" if reprep else ""
        print(f"{label:>8} {budget if budget is not None else '-':>6} {used:>9} {rec['split_ratio']:>7.2f}x {routes:>9} "
              f"{agree:>11.4f} {seconds:>7.1f}{extra}", flush=True)
    crops = [{"input": evals["input"][i:i + 1]} for i in range(codec_evals)]

    def same_top1(got, i):
        return got.argmax(1)[0] == want[i]

    for codec in ("fp16", "int8"):
        agree, routes = codec_split(model, shapes, crops, codec, same_top1)
        rows.append(codec_row(codec, dense, routes, {"top1_agreement": agree, "evaluated": codec_evals}))
    # RePurpose and a codec compose: the restructured model's split with fp16 routes
    r = repurpose(model, calib, 2, codec_budget, max_positions=8192, batch_size=16, method="lowrank")
    sent = channel_bytes(analyse(r.model, shapes), r.partition, r.model, 2).sent_bytes
    agree, routes = codec_split(r.model, shapes, crops, "fp16", same_top1, r.partition)
    rows.append(codec_row("fp16", dense, routes, {"top1_agreement": agree, "evaluated": codec_evals}, sent, "lowrank",
                          codec_budget))
    return {"efficientnet_lite0": rows}


def codec_split(model, shapes: dict, feeds: list[dict], codec: str, score, partition=None) -> tuple[float, int]:
    """No restructuring: the exact channel split (partial sums where fewer) with a lossy `codec` on
    every route between devices, run from its bundles through LocalCluster (which applies the codecs)
    on each of `feeds`; returns (mean of score(output, i), cross-device bytes with the codec)."""
    import tempfile

    from edgepart.local import LocalCluster
    from edgepart.packager.channel import package_channel
    from edgepart.packager.graph import analyse

    with tempfile.TemporaryDirectory() as tmp:
        res = package_channel(model, analyse(model, shapes), cluster(2), tmp, partition, model_name="codec",
                              wire_codec=codec)
        lc = LocalCluster.from_dist(tmp)
        out = res.plan.outputs[0].name
        scores = [float(score(lc.run(f)[out], i)) for i, f in enumerate(feeds)]
    # fp16: 2 bytes a value; int8: 1 byte a value plus one float32 scale per channel (not counted here)
    return float(np.mean(scores)), int(res.report.cross_device_bytes / {"fp16": 2, "int8": 4}[codec])


def codec_row(codec: str, dense, routes: int, fidelity: dict, sent: int | None = None, method: str = "exact",
              budget: float | None = None) -> dict:
    """A row for a split whose routes carry `codec`: `sent` bytes before the codec (default: the
    exact split's)."""
    used = (dense.sent_bytes if sent is None else sent) / {"fp16": 2, "int8": 4}[codec]
    rec = {"method": f"{method}+{codec}", "budget": budget, "split_bytes": int(used), "split_dense_bytes": dense.dense_bytes,
           "split_ratio": dense.dense_bytes / used, "routes_bytes": routes, **fidelity}
    fid = ", ".join(f"{k} {v:.4f}" for k, v in fidelity.items() if isinstance(v, float))
    what = "no RePurpose: the exact split" if method == "exact" else f"RePurpose {method} {budget}"
    print(f"{method + '+' + codec:>8} {budget or '-':>6} {int(used):>9} {rec['split_ratio']:>7.2f}x {routes:>9}  {fid}   "
          f"({what}, {codec} on every route between devices{'; per-channel scales not counted' if codec == 'int8' else ''})",
          flush=True)
    return rec


def embed(model, feeds: dict, batch: int = 50) -> np.ndarray:
    """Sentence embeddings [N, H] from a MiniLM ONNX model, in batches."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)])


def bench_minilm(runs=(("lowrank", 0.5), ("lowrank", 0.4), ("lowrank", 0.33)), n_eval: int = 300, seq: int = 32,
                 n_text: int = 2000, codec_budget: float = 0.5) -> dict:
    """MiniLM, 2 devices, RePurpose only: cosine similarity of sentence embeddings with the unsplit
    model on `n_eval` English sentences vs bytes crossing (at a planning shape of batch 1 x `seq`
    tokens). Calibrated on `n_text` other docstring sentences packed into unpadded windows."""
    from edgepart.packager import zoo
    from edgepart.packager.channel import channel_bytes
    from edgepart.packager.graph import analyse, load_model
    from edgepart.packager.sparse import replicate, repurpose

    model = load_model(zoo.minilm())
    shapes = {"input_ids": (1, seq), "attention_mask": (1, seq)}
    evals = zoo.sentence_inputs(zoo.english_sentences(n_eval))
    calib = zoo.sentence_windows(zoo.calibration_text(n_text), seq)
    want = embed(model, evals)
    rows = []
    n = 2
    dense = channel_bytes(analyse(model, shapes), None, model, n)
    dense_routes = routes_bytes(model, shapes, None, n)
    print(f"\nMiniLM, {n} devices: dense split {dense.dense_bytes} B in split layers (the exact compile, with partial "
          f"sums, sends {dense.sent_bytes} B there), {dense_routes} B on all routes per {seq}-token sentence; "
          f"{n_eval} evaluation sentences, {len(calib['input_ids'])} calibration windows")
    print(f"{'method':>8} {'budget':>6} {'split B':>9} {'vs dense':>8} {'routes B':>9} {'mean cos':>8} "
          f"{'min cos':>8} {'time s':>7}")
    for method, budget in runs:
        t = time.perf_counter()
        r = repurpose(model, calib, n, budget, input_shapes=shapes, batch_size=32, method=method,
                      max_positions=16384)
        seconds = time.perf_counter() - t
        got = embed(r.model, evals)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        routes = routes_bytes(r.model, shapes, r.partition, n)
        used = channel_bytes(analyse(r.model, shapes), r.partition, r.model, n).sent_bytes
        rec = {"devices": n, "method": method, "budget": budget, "split_bytes": used,
               "split_dense_bytes": dense.dense_bytes, "split_ratio": dense.dense_bytes / max(used, 1),
               "routes_bytes": routes, "routes_dense_bytes_exact_compile": dense_routes,
               "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "seconds": round(seconds, 1)}
        rows.append(rec)
        print(f"{method:>8} {budget:>6} {used:>9} {rec['split_ratio']:>7.2f}x {routes:>9} "
              f"{rec['mean_cosine']:>8.4f} {rec['min_cosine']:>8.4f} {seconds:>7.1f}", flush=True)
    sents = zoo.english_sentences(n_eval)

    def cosine(got, i):
        return (got[0] @ want[i]) / np.linalg.norm(got[0]) / np.linalg.norm(want[i])

    for codec in ("fp16", "int8"):
        cos, routes = codec_split(model, shapes, [zoo.sentence_inputs([t]) for t in sents], codec, cosine)
        rows.append(codec_row(codec, dense, routes, {"mean_cosine": cos, "evaluated": n_eval}))
    # RePurpose and a codec compose: the restructured model's split with fp16 routes
    r = repurpose(model, calib, n, codec_budget, input_shapes=shapes, batch_size=32, method="lowrank", max_positions=16384)
    sent = channel_bytes(analyse(r.model, shapes), r.partition, r.model, n).sent_bytes
    cos, routes = codec_split(r.model, shapes, [zoo.sentence_inputs([t]) for t in sents], "fp16", cosine, r.partition)
    rows.append(codec_row("fp16", dense, routes, {"mean_cosine": cos, "evaluated": n_eval}, sent, "lowrank", codec_budget))
    return {"minilm": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--efficientnet", action="store_true", help="also EfficientNet-Lite0 at 2 devices (slow)")
    ap.add_argument("--minilm", action="store_true", help="also MiniLM at 2 devices (cosine of embeddings)")
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    results: dict = {}
    if not args.skip_digits:
        results.update(bench_digits())
    if args.efficientnet:
        results.update(bench_efficientnet())
    if args.minilm:
        results.update(bench_minilm())
    old = RESULTS / "sparse.json"
    if old.is_file():  # keep the other part's figures when only one part ran
        results = {**json.loads(old.read_text()), **results}
    print(f"\nwrote {save('sparse', results)}")


if __name__ == "__main__":
    main()
