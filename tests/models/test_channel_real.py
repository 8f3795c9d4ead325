"""Channel splits of real trained models are exact: a CNN trained here on scikit-learn's digits (2 and 4
devices, whole test set, same accuracy) and EfficientNet-Lite0 with its ImageNet weights (2 devices)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = [pytest.mark.models, pytest.mark.timeout(300)]

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from digits_cnn import digits_cnn  # noqa: E402

from edgepart.local import LocalCluster  # noqa: E402
from edgepart.packager.strategies.channel.compiler import channel_bytes, package_channel  # noqa: E402
from edgepart.packager.strategies.channel._layout import partitionable  # noqa: E402
from edgepart.packager.cluster import cluster_from_dict  # noqa: E402
from edgepart.packager.model.graph import analyse, load_model  # noqa: E402
from edgepart.plan import CALLER  # noqa: E402

ATOL = 1e-4


def cluster(n: int):
    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": 5} for i in range(n)],
                              "links": {"default": {"bandwidth_mbps": 50, "latency_ms": 1}}})


@pytest.fixture(scope="module")
def digits():
    model, data = digits_cnn()
    assert data.accuracy >= 0.95, f"the digits CNN reached only {data.accuracy:.3f}"
    return model, data


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("partition", ["default", "random"])
def test_digits_cnn_split_is_exact(digits, n, partition, tmp_path):
    model, data = digits
    graph = analyse(model, {"x": (1, 1, 8, 8)})  # planned for one image, run on the whole test set at once
    part = None
    if partition == "random":
        rng = np.random.default_rng(n)
        part = {t: rng.integers(0, n, c) for t, c in partitionable(model, graph).items()}
    res = package_channel(model, graph, cluster(n), tmp_path / "dist", part, model_name="digits")
    got = LocalCluster.from_dist(tmp_path / "dist").run({"x": data.x_test})["logits"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.x_test})[0]
    assert np.max(np.abs(got - want)) <= ATOL
    acc_split = float((got.argmax(1) == data.y_test).mean())
    acc_whole = float((want.argmax(1) == data.y_test).mean())
    assert acc_split == acc_whole >= 0.95

    report = channel_bytes(graph, part, model, n_devices=n)
    assert [x.node for x in report.layers] == [nd.name for nd in graph.nodes if nd.op_type == "Conv"]
    assert report.used_bytes == report.dense_bytes  # dense trained weights: every channel is used
    (fc,) = [d for _, op, d in res.report.decisions if op == "Gemm"]
    assert dict(fc.options)[fc.note.split("chose ")[1]] == min(b for _, b in fc.options)
    if partition == "default":  # 2 devices: 10 partial logits (40 B) beat 16 pooled channels (64 B);
        # 4 devices: 24 pooled channels (96 B) beat 3 x 10 partial logits (120 B)
        assert (fc.kind, min(b for _, b in fc.options)) == ({2: ("reduce", 40), 4: ("whole", 96)}[n])
    cross = sum(r.size_bytes for r in res.report.routes if CALLER not in (r.src, r.dst))
    assert cross == res.report.cross_device_bytes == dict(res.plan.estimates)["cross_device_bytes"]
    print(f"\ndigits {n} devices ({partition}): split layers dense {report.dense_bytes} B, used "
          f"{report.used_bytes} B; all routes between devices {cross} B per image; "
          f"{len(res.plan.steps)} steps; accuracy {acc_split:.4f}")


def test_digits_zeroed_cross_blocks_cut_bytes(digits, tmp_path):
    """Zero every cross-device block of the middle conv: its input no longer crosses, still exact."""
    model, data = digits
    model = model.__class__.FromString(model.SerializeToString())
    graph = analyse(model, {"x": (1, 1, 8, 8)})
    convs = [nd for nd in model.graph.node if nd.op_type == "Conv"]
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == convs[1].input[1])
    w = numpy_helper.to_array(init).copy()
    rows, cols = np.arange(w.shape[0]) * 2 // w.shape[0], np.arange(w.shape[1]) * 2 // w.shape[1]
    w[rows[:, None] != cols[None, :]] = 0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    before = channel_bytes(analyse(digits[0], {"x": (1, 1, 8, 8)}), None, digits[0], n_devices=2)
    after = channel_bytes(graph, None, model, n_devices=2)
    layer = {x.node: x for x in after.layers}[graph.nodes[graph.producer[convs[1].output[0]]].name]
    assert layer.used_bytes == 0 and layer.dense_bytes > 0
    assert after.used_bytes == before.used_bytes - layer.dense_bytes
    package_channel(model, graph, cluster(2), tmp_path / "dist")
    got = LocalCluster.from_dist(tmp_path / "dist").run({"x": data.x_test})["logits"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.x_test})[0]
    assert np.max(np.abs(got - want)) <= ATOL


def test_efficientnet_lite0_two_devices(efficientnet_lite0_path, tmp_path):
    """Real ImageNet weights; Pad nodes whose pads come from shape arithmetic; depthwise convs; a
    residual stream per block. Planned at batch 1, run at batch 2."""
    from edgepart.testing import zoo

    model = load_model(efficientnet_lite0_path)
    graph = analyse(model, {"input": (1, 3, 224, 224)})
    res = package_channel(model, graph, cluster(2), tmp_path / "dist", model_name="efficientnet-lite0")
    feeds = zoo.imagenet_inputs(2)
    got = LocalCluster.from_dist(tmp_path / "dist").run(feeds)["logits"]
    want = ort.InferenceSession(str(efficientnet_lite0_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= ATOL
    assert (got.argmax(1) == want.argmax(1)).all()
    kinds = {d.kind for _, op, d in res.report.decisions if op == "Conv"}
    assert kinds == {"contract"}  # every full conv split; depthwise convs stay local (not listed)


@pytest.mark.parametrize("n", [2, 4])
def test_efficientnet_lite0_replicated_stem(efficientnet_lite0_path, tmp_path, n):
    """Every device computes its own stem and first block (replicate.py): exact, and the split sends
    none of their 112x112 activations: at least 3.5x fewer bytes than the dense split on 2 devices
    for at most 5 % more compute per device."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.restructure import replicate

    model = load_model(efficientnet_lite0_path)
    shapes = {"input": (1, 3, 224, 224)}
    r = replicate(model, n, 0.05, input_shapes=shapes)
    assert r.report.nodes[-1] == "/_blocks.0/_project_conv/Conv" and r.report.extra_fraction <= 0.05
    dense = channel_bytes(analyse(model, shapes), None, model, n)
    assert r.report.bytes_before == dense.sent_bytes
    assert dense.dense_bytes / r.report.bytes_after >= (3.5 if n == 2 else 2.5)
    package_channel(r.model, analyse(r.model, shapes), cluster(n), tmp_path / "dist", r.partition, model_name="eff")
    feeds = zoo.imagenet_inputs(2)
    got = LocalCluster.from_dist(tmp_path / "dist").run(feeds)["logits"]
    want = ort.InferenceSession(str(efficientnet_lite0_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= ATOL
    assert (got.argmax(1) == want.argmax(1)).all()

def test_ppocr_det_replicated_first_blocks(ppocr_det_path, tmp_path):
    """PP-OCRv4's detector (HardSwish written out, scales that come first in Mul/Add): its first
    blocks replicated on 2 devices, exact through the bundles, fewer bytes than the exact split."""
    from edgepart.packager.strategies.channel.restructure import replicate

    model = load_model(ppocr_det_path)
    name = model.graph.input[0].name
    shapes = {name: (1, 3, 320, 320)}
    r = replicate(model, 2, 0.05, input_shapes=shapes)
    assert r.report.nodes and r.report.extra_fraction <= 0.05
    assert r.report.bytes_after < 0.75 * r.report.bytes_before
    package_channel(r.model, analyse(r.model, shapes), cluster(2), tmp_path / "dist", r.partition, model_name="ocr")
    x = {name: np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)}
    got = next(iter(LocalCluster.from_dist(tmp_path / "dist").run(x).values()))
    want = ort.InferenceSession(str(ppocr_det_path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.max(np.abs(got - want)) <= ATOL

@pytest.mark.parametrize("n", [2, 4])
def test_minilm_split_by_heads_is_exact(minilm_path, tmp_path, n):
    """all-MiniLM-L6-v2: attention split by heads, the MLP by neurons, every LayerNorm by exchanged
    statistics, the embedding tables by columns. Planned at batch 1 x 16 tokens, run on real sentences
    at other batch sizes and lengths (with padding)."""
    from edgepart.testing import zoo

    model = load_model(minilm_path)
    graph = analyse(model, {"input_ids": (1, 16), "attention_mask": (1, 16)})
    res = package_channel(model, graph, cluster(n), tmp_path / "dist", model_name="minilm")
    lc = LocalCluster.from_dist(tmp_path / "dist")
    sess = ort.InferenceSession(str(minilm_path), providers=["CPUExecutionProvider"])
    s = zoo.english_sentences(40)
    for feeds in (zoo.sentence_inputs(s[:4]), zoo.sentence_inputs(s[30:40] + ["It works."])):
        assert feeds["attention_mask"].min() == 0  # real padding
        got = lc.run(feeds)["sentence_embedding"]
        want = sess.run(None, feeds)[0]
        assert np.max(np.abs(got - want)) <= ATOL
    kinds = {}
    for _, op, d in res.report.decisions:
        kinds.setdefault(d.kind, set()).add(op)
    assert kinds["norm"] == {"LayerNormalization"}  # 13: embeddings and 2 per layer
    assert sum(d.kind == "norm" for _, _, d in res.report.decisions) == 13
    # only the tail's L2 normalisation of one vector per sentence is gathered
    assert kinds["whole"] <= {"ReduceSum", "Clip", "ReduceL2", "Expand"}
    heads = [nd.outputs[0] for nd in graph.nodes if nd.op_type in ("Transpose", "Softmax")]
    assert heads and not {r.tensor.split("@")[0] for r in res.report.routes} & set(heads)
    print(f"\nMiniLM {n} devices: {res.report.cross_device_bytes} B between devices per sentence of 16 tokens, "
          f"{len(res.plan.steps)} steps")
