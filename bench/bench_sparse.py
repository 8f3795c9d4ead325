"""Sparse channel splits (issue 4): bytes crossing devices vs accuracy, per method.

    .venv/bin/python bench/bench_sparse.py                    # digits CNN, 2 and 4 devices, 5 seeds (~8 min)
    .venv/bin/python bench/bench_sparse.py --efficientnet     # + EfficientNet-Lite0, 2 devices (~25 min a seed)
    .venv/bin/python bench/bench_sparse.py --minilm           # + MiniLM, 2 devices (~15 min a seed)
    .venv/bin/python bench/bench_sparse.py --seeds 1          # seed 0 only (a quick look, not a claim)

Every accuracy and fidelity figure is measured over seeds (--seeds, default 5) and reported as the
median and the worst seed, with each seed's value in the JSON: one seed's digits change with the CPU
and the thread count (docs/sparse.md, "Measured").

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
    from edgepart.packager.strategies.channel.compiler import compile_channel
    from edgepart.packager.model.graph import analyse

    return compile_channel(model, analyse(model, shapes), cluster(n), partition).report.cross_device_bytes


def trained_net(model):
    """digits_net() holding the trained weights of the ONNX digits CNN (same parameter names)."""
    import torch
    from onnx import numpy_helper

    net = digits_net()
    net.load_state_dict({i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
                         if i.name in net.state_dict()})
    return net


SEEDS = (0, 1, 2, 3, 4)  # one claim, several seeds: docs/sparse.md, "Measured"


def spread(values, higher_is_better: bool = True) -> dict:
    """Per-seed values with their median and worst (the lowest, or the highest of an error)."""
    v = [float(x) for x in values]
    return {"per_seed": v, "median": float(np.median(v)), "worst": min(v) if higher_is_better else max(v)}


def bench_digits(seeds=SEEDS) -> dict:
    """The digits CNN trained with each seed (its own train/test split, training run, calibration
    positions and so partition), every method run on each; one row per method with the median and
    worst over seeds of the accuracy and of its drop against each seed's unsplit model."""
    import torch
    from digits_cnn import digits_cnn

    from edgepart.packager.strategies.channel.compiler import channel_bytes, compile_channel
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.channel.restructure import repurpose
    from edgepart.packager.strategies.channel.restructure.disco import disco_train

    torch.set_num_threads(2)
    shapes = {"x": (1, 1, 8, 8)}
    methods = {
        "magnitude prune": dict(steps=("prune",), selection="magnitude"),
        "assign only": dict(steps=("assign", "prune"), selection="magnitude"),
        "assign+prune": dict(steps=("assign", "prune")),
        "prune+adjust": dict(steps=("prune", "adjust")),
        "full RePurpose": dict(),
    }
    budgets = (0.02, 0.05, 0.1, 0.2, 0.3)
    per: dict[tuple, dict[str, list]] = {}  # (devices, method, budget) -> lists over seeds
    wholes = []
    for seed in seeds:
        t_seed = time.perf_counter()
        model, data = digits_cnn(seed)
        calib = {"x": data.x_train}
        test = {"x": data.x_test}
        acc_whole = float((run(model, test).argmax(1) == data.y_test).mean())
        wholes.append(acc_whole)
        dense = {n: channel_bytes(analyse(model, shapes), None, model, n) for n in (2, 4)}
        dense_routes = {n: routes_bytes(model, shapes, None, n) for n in (2, 4)}

        def row(n, name, m, part, used, seconds, budget=BUDGET, **extra):
            acc = float((run(m, test).argmax(1) == data.y_test).mean())
            rec = per.setdefault((n, name, budget), {})
            for k, v in {"split_bytes": used, "split_dense_bytes": dense[n].dense_bytes,
                         "routes_bytes": routes_bytes(m, shapes, part, n), "routes_dense_bytes": dense_routes[n],
                         "accuracy": acc, "accuracy_unsplit": acc_whole, "seconds": seconds, **extra}.items():
                rec.setdefault(k, []).append(v)

        def macs(d, n):
            """What a DISCO split computes: its split layers' MACs, and all the compiled devices'."""
            compiled = compile_channel(d.model, analyse(d.model, shapes), cluster(n), d.partition).report.macs
            return {"macs_split_layers": d.report.macs[1], "macs_compiled": int(sum(dict(compiled).values()))}

        def disco(n, net, **kw):
            t = time.perf_counter()
            d = disco_train(net, n, (data.x_train, data.y_train), example_input=torch.zeros(1, 1, 8, 8),
                            output_names=("logits",), budget=BUDGET, seed=seed, **kw)
            return d, time.perf_counter() - t

        for n in (2, 4):
            row(n, "dense split", model, None, dense[n].used_bytes, 0.0, 1.0)
            for name, kw in methods.items():
                t = time.perf_counter()
                r = repurpose(model, calib, n, BUDGET, seed=seed, **kw)
                row(n, name, r.model, r.partition, r.report.used_bytes, time.perf_counter() - t)
            common = dict(lam=3.0, epochs=20, finetune_epochs=20, lr=3e-3, finetune_lr=3e-3)
            d, sec = disco(n, trained_net(model), **common)
            row(n, "DISCO", d.model, d.partition, d.report.bytes.used_bytes, sec, **macs(d, n))
            d, sec = disco(n, trained_net(model), within_keep=0.5, **common)
            row(n, "DISCO within 0.5", d.model, d.partition, d.report.bytes.used_bytes, sec, **macs(d, n))
            torch.manual_seed(seed)
            d, sec = disco(n, digits_net(), lam=1.0, epochs=40, finetune_epochs=30, lr=1e-2, finetune_lr=1e-2)
            row(n, "DISCO scratch", d.model, d.partition, d.report.bytes.used_bytes, sec)
            for budget in budgets:
                t = time.perf_counter()
                r = repurpose(model, calib, n, budget, seed=seed)
                row(n, "full RePurpose", r.model, r.partition, r.report.used_bytes, time.perf_counter() - t, budget)
        print(f"seed {seed}: unsplit accuracy {acc_whole:.4f} ({time.perf_counter() - t_seed:.0f} s)", flush=True)

    unsplit = spread(wholes)
    print(f"\ndigits CNN over seeds {list(seeds)}: unsplit test accuracy median {unsplit['median']:.4f}, worst "
          f"{unsplit['worst']:.4f} ({', '.join(f'{w:.4f}' for w in wholes)}); budget {BUDGET} of the dense split's bytes")
    print("accuracy: median and worst seed; drop: points lost against each seed's own unsplit model, median and worst;"
          " bytes: the median seed's")
    head = (f"{'devices':>7}  {'method':<16} {'budget':>6} {'split B':>8} {'vs dense':>8} {'routes B':>8} {'vs dense':>8} "
            f"{'acc med':>7} {'acc worst':>9} {'drop med':>8} {'drop worst':>10} {'time s':>6}")
    rows = []

    def show(keys):
        print(head)
        for n, name, budget in keys:
            rec = per[(n, name, budget)]
            drops = [100 * (w - a) for w, a in zip(rec["accuracy_unsplit"], rec["accuracy"])]
            split, routes = (int(np.median(rec[k])) for k in ("split_bytes", "routes_bytes"))
            out = {"devices": n, "method": name, "budget": budget, "seeds": list(seeds), "split_bytes": split,
                   "split_dense_bytes": rec["split_dense_bytes"][0], "split_ratio": rec["split_dense_bytes"][0] / max(split, 1),
                   "routes_bytes": routes, "routes_dense_bytes": rec["routes_dense_bytes"][0],
                   "routes_ratio": rec["routes_dense_bytes"][0] / max(routes, 1),
                   "split_bytes_per_seed": rec["split_bytes"], "routes_bytes_per_seed": rec["routes_bytes"],
                   "accuracy": spread(rec["accuracy"]), "accuracy_unsplit": spread(rec["accuracy_unsplit"]),
                   "drop_points": spread(drops, higher_is_better=False), "seconds": spread(rec["seconds"])}
            for k in ("macs_split_layers", "macs_compiled"):
                if k in rec:
                    out[k] = spread(rec[k], higher_is_better=False)
            rows.append(out)
            a, d = out["accuracy"], out["drop_points"]
            print(f"{n:>7}  {name:<16} {budget:>6} {split:>8} {out['split_ratio']:>7.2f}x {routes:>8} "
                  f"{out['routes_ratio']:>7.2f}x {a['median']:>7.4f} {a['worst']:>9.4f} {d['median']:>+8.2f} "
                  f"{d['worst']:>+10.2f} {out['seconds']['median']:>6.1f}")
            if "macs_compiled" in out:
                print(f"{'':>9}(median MACs per image: split layers {int(out['macs_split_layers']['median']):,}; all "
                      f"compiled devices {int(out['macs_compiled']['median']):,})")

    show([k for k in per if k[2] in (BUDGET, 1.0)])
    print("\nfull RePurpose over budgets")
    show(sorted((k for k in per if k[1] == "full RePurpose" and k[2] != BUDGET), key=lambda k: (k[0], -k[2])))
    return {"digits": rows}


def photo_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """[n, 3, size, size]: random scales, crops and flips of scikit-learn's two photos, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from edgepart.testing.zoo import IMAGENET_MEAN, IMAGENET_STD

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


def merge_seeds(by_seed: list[list[dict]], seeds, fidelity: tuple[str, ...]) -> list[dict]:
    """The rows of each seed (the same runs in the same order) -> one row per run: each fidelity
    figure a spread over seeds (per seed, median, worst); bytes and time the median seed's, with
    the per-seed values beside them (calibration moves the bytes a little)."""
    out = []
    for rows in zip(*by_seed):
        rec = dict(rows[0], seeds=list(seeds))
        for k in fidelity:
            if isinstance(rec.get(k), float):
                rec[k] = spread([r[k] for r in rows])
        for k in ("split_bytes", "routes_bytes", "seconds"):
            if k in rec:
                rec[f"{k}_per_seed"] = [r[k] for r in rows]
                rec[k] = type(rows[0][k])(np.median(rec[f"{k}_per_seed"]))
        if "split_dense_bytes" in rec:
            rec["split_ratio"] = rec["split_dense_bytes"] / max(rec["split_bytes"], 1)
        out.append(rec)
    return out


def print_merged(title: str, rows: list[dict], fidelity: tuple[str, ...]) -> None:
    print(f"\n{title}: median and worst over seeds {rows[0]['seeds']} (bytes: the median seed's)")
    print(f"{'method':>16} {'budget':>6} {'split B':>9} {'vs dense':>8} " + " ".join(f"{k + ' med':>18} {'worst':>7}"
                                                                           for k in fidelity))
    for r in rows:
        fid = " ".join(f"{r[k]['median']:>18.4f} {r[k]['worst']:>7.4f}" if isinstance(r.get(k), dict) else f"{'-':>18} {'-':>7}"
                       for k in fidelity)
        budget = r["budget"] if r["budget"] is not None else "-"
        print(f"{r['method']:>16} {budget:>6} {r['split_bytes']:>9} {r['split_ratio']:>7.2f}x {fid}")


def bench_efficientnet(runs=(("lowrank", 0.4, 0.0), ("lowrank", 0.36, 0.0), ("lowrank", 0.33, 0.0), ("prune", 0.33, 0.0),
                             ("replicate", None, REPLICATE), ("lowrank", 0.25, REPLICATE), ("lowrank", 0.2, REPLICATE),
                             ("replicate", None, REPLICATE_MORE), ("lowrank", 0.12, REPLICATE_MORE)), n_eval: int = 500,
                       n_calib: int = 256, codec_evals: int = 200, codec_budget: float = 0.4, seeds=SEEDS) -> dict:
    """Per seed s: calibration crops drawn with 2s+1, evaluation crops with 2s+2, RePurpose's
    sampled positions with s (seed 0 is the single run of earlier versions)."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.compiler import channel_bytes
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.strategies.channel.restructure import replicate, repurpose

    model = load_model(zoo.efficientnet_lite0())
    shapes = {"input": (1, 3, 224, 224)}
    dense = channel_bytes(analyse(model, shapes), None, model, 2)
    dense_routes = routes_bytes(model, shapes, None, 2)
    by_seed = []
    for seed in seeds:
        calib = {"input": photo_crops(n_calib, seed=2 * seed + 1)}
        evals = {"input": photo_crops(n_eval, seed=2 * seed + 2)}
        want = run(model, evals).argmax(1)
        print(f"\nEfficientNet-Lite0, 2 devices, seed {seed}: dense split {dense.dense_bytes} B in split layers (the exact "
              f"compile, with partial sums, sends {dense.sent_bytes} B there, {dense.dense_bytes / dense.sent_bytes:.2f}x "
              f"fewer), {dense_routes} B on all routes per image; {n_eval} evaluation crops ({len(set(want.tolist()))} "
              f"distinct top-1 classes)")
        print(f"{'method':>8} {'budget':>6} {'split B':>9} {'vs dense':>8} {'routes B':>9} {'top-1 agree':>11} {'time s':>7}"
              f"  (rep: the first layers replicated on both devices first, +MACs per device)")
        rows = []
        for method, budget, rep in runs:
            t = time.perf_counter()
            if method == "replicate":  # exact: no calibration, no budget
                r = replicate(model, 2, rep, input_shapes=shapes)
            else:
                r = repurpose(model, calib, 2, budget, max_positions=8192, batch_size=16, replicate=rep, seed=seed,
                              **({"ridge": 1e-3} if method == "prune" else {}), method=method)
            seconds = time.perf_counter() - t
            reprep = r.report if method == "replicate" else getattr(r.report, "replicated", None)
            label = f"rep{rep:g}+{method}" if rep and method != "replicate" else method
            agree = float((run(r.model, evals).argmax(1) == want).mean())
            routes = routes_bytes(r.model, shapes, r.partition, 2)
            used = channel_bytes(analyse(r.model, shapes), r.partition, r.model, 2).sent_bytes
            rec = {"method": label, "budget": budget, "replicate": rep, "split_bytes": used,
                   "split_dense_bytes": dense.dense_bytes, "split_ratio": dense.dense_bytes / max(used, 1),
                   "routes_bytes": routes, "routes_dense_bytes_exact_compile": dense_routes, "top1_agreement": agree,
                   "seconds": round(seconds, 1), "extra_macs_per_device": reprep.extra_fraction if reprep else 0.0}
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
        r = repurpose(model, calib, 2, codec_budget, max_positions=8192, batch_size=16, method="lowrank", seed=seed)
        sent = channel_bytes(analyse(r.model, shapes), r.partition, r.model, 2).sent_bytes
        agree, routes = codec_split(r.model, shapes, crops, "fp16", same_top1, r.partition)
        rows.append(codec_row("fp16", dense, routes, {"top1_agreement": agree, "evaluated": codec_evals}, sent, "lowrank",
                              codec_budget))
        by_seed.append(rows)
    merged = merge_seeds(by_seed, seeds, ("top1_agreement",))
    print_merged("EfficientNet-Lite0, 2 devices, top-1 agreement", merged, ("top1_agreement",))
    return {"efficientnet_lite0": merged}


def codec_split(model, shapes: dict, feeds: list[dict], codec: str, score, partition=None) -> tuple[float, int]:
    """No restructuring: the exact channel split (partial sums where fewer) with a lossy `codec` on
    every route between devices, run from its bundles through LocalCluster (which applies the codecs)
    on each of `feeds`; returns (mean of score(output, i), cross-device bytes with the codec)."""
    import tempfile

    from edgepart.local import LocalCluster
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.model.graph import analyse

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
                 n_text: int = 2000, codec_budget: float = 0.5, seeds=SEEDS) -> dict:
    """MiniLM, 2 devices, RePurpose only: cosine similarity of sentence embeddings with the unsplit
    model on `n_eval` English sentences vs bytes crossing (at a planning shape of batch 1 x `seq`
    tokens). Calibrated on `n_text` other docstring sentences packed into unpadded windows. Per seed
    s > 0: the calibration sentences shuffled before packing (other windows), `n_eval` of the 555
    evaluation sentences drawn, and RePurpose's sampled positions; seed 0 is the single run of
    earlier versions."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.compiler import channel_bytes
    from edgepart.packager.model.graph import analyse, load_model
    from edgepart.packager.strategies.channel.restructure import repurpose

    model = load_model(zoo.minilm())
    shapes = {"input_ids": (1, seq), "attention_mask": (1, seq)}
    n = 2
    dense = channel_bytes(analyse(model, shapes), None, model, n)
    dense_routes = routes_bytes(model, shapes, None, n)
    texts, pool = zoo.calibration_text(n_text), zoo.english_sentences(max(n_eval, 555))
    by_seed = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts)) if seed else np.arange(len(texts))
        calib = zoo.sentence_windows([texts[i] for i in order], seq)
        sents = [pool[i] for i in (np.sort(rng.choice(len(pool), n_eval, replace=False)) if seed else range(n_eval))]
        evals = zoo.sentence_inputs(sents)
        want = embed(model, evals)
        rows = []
        print(f"\nMiniLM, {n} devices, seed {seed}: dense split {dense.dense_bytes} B in split layers (the exact compile, "
              f"with partial sums, sends {dense.sent_bytes} B there), {dense_routes} B on all routes per {seq}-token "
              f"sentence; {n_eval} evaluation sentences, {len(calib['input_ids'])} calibration windows")
        print(f"{'method':>8} {'budget':>6} {'split B':>9} {'vs dense':>8} {'routes B':>9} {'mean cos':>8} "
              f"{'min cos':>8} {'time s':>7}")
        for method, budget in runs:
            t = time.perf_counter()
            r = repurpose(model, calib, n, budget, input_shapes=shapes, batch_size=32, method=method,
                          max_positions=16384, seed=seed)
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

        def cosine(got, i):
            return (got[0] @ want[i]) / np.linalg.norm(got[0]) / np.linalg.norm(want[i])

        for codec in ("fp16", "int8"):
            cos, routes = codec_split(model, shapes, [zoo.sentence_inputs([t]) for t in sents], codec, cosine)
            rows.append(codec_row(codec, dense, routes, {"mean_cosine": cos, "evaluated": n_eval}))
        # RePurpose and a codec compose: the restructured model's split with fp16 routes
        r = repurpose(model, calib, n, codec_budget, input_shapes=shapes, batch_size=32, method="lowrank",
                      max_positions=16384, seed=seed)
        sent = channel_bytes(analyse(r.model, shapes), r.partition, r.model, n).sent_bytes
        cos, routes = codec_split(r.model, shapes, [zoo.sentence_inputs([t]) for t in sents], "fp16", cosine,
                                  r.partition)
        rows.append(codec_row("fp16", dense, routes, {"mean_cosine": cos, "evaluated": n_eval}, sent, "lowrank",
                              codec_budget))
        by_seed.append(rows)
    fidelity = ("mean_cosine", "min_cosine")
    merged = merge_seeds(by_seed, seeds, fidelity)
    print_merged("MiniLM, 2 devices, cosine with the unsplit embeddings", merged, fidelity)
    return {"minilm": merged}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--efficientnet", action="store_true", help="also EfficientNet-Lite0 at 2 devices (slow)")
    ap.add_argument("--minilm", action="store_true", help="also MiniLM at 2 devices (cosine of embeddings)")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--seeds", type=int, default=len(SEEDS),
                    help=f"measure over seeds 0..N-1 and report the median and worst (default {len(SEEDS)}; 1: seed 0 only)")
    args = ap.parse_args()
    seeds = tuple(range(max(1, args.seeds)))
    results: dict = {}
    if not args.skip_digits:
        results.update(bench_digits(seeds))
    if args.efficientnet:
        results.update(bench_efficientnet(seeds=seeds))
    if args.minilm:
        results.update(bench_minilm(seeds=seeds))
    old = RESULTS / "sparse.json"
    if old.is_file():  # keep the other part's figures when only one part ran
        results = {**json.loads(old.read_text()), **results}
    print(f"\nwrote {save('sparse', results)}")


if __name__ == "__main__":
    main()
