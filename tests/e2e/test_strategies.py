"""Other strategies and wire codecs through real agent processes: the agents only execute, so a
channel split and codec-carrying routes must run unchanged (docs/architecture.md, "The packager
compiles, the agent only executes")."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from e2e_helpers import RUN, assert_same, reference, seeded_feeds, write_cluster

import graphs

pytestmark = pytest.mark.timeout(180)


def _save(model: onnx.ModelProto, out):
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("n", [2, 3])
def test_channel_split_through_agents(n, tmp_path, agents, sessions):
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.model.graph import analyse

    model = graphs.residual()
    path = _save(model, tmp_path)
    cluster = load_cluster(write_cluster(tmp_path / "cluster.yaml", [f"dev{i}" for i in range(n)], [1.0] * n))
    res = package_channel(model, analyse(model), cluster, tmp_path / "dist", None, model_name=f"channel-{RUN}-{n}")
    assert res.plan.strategy == "channel"
    assert any(r.src != r.dst and "@caller" not in (r.src, r.dst) for r in res.plan.routes), "no device talks to another"
    agents(tmp_path / "dist")
    sess = sessions(tmp_path / "dist", timeout_s=10)
    for seed in range(3):
        feeds = seeded_feeds(res.plan, seed)
        assert_same(sess.submit(feeds).result(15), reference(path, feeds), f"channel split, {n} devices, seed {seed}")


@pytest.mark.models
@pytest.mark.parametrize("n", [2, 4])
def test_minilm_channel_split_through_agents(n, minilm_path, tmp_path, agents, sessions):
    """MiniLM split by heads, MLP neurons and LayerNorm statistics over 2 and 4 agent processes: the
    statistics and partial-sum messages are ordinary routes; planned at 1 x 16 tokens, run on real
    sentences of other batch sizes and lengths."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.model.graph import analyse, load_model

    model = load_model(minilm_path)
    cluster = load_cluster(write_cluster(tmp_path / "cluster.yaml", [f"dev{i}" for i in range(n)], [1.0] * n))
    graph = analyse(model, {"input_ids": (1, 16), "attention_mask": (1, 16)})
    res = package_channel(model, graph, cluster, tmp_path / "dist", None, model_name=f"channel-minilm-{RUN}-{n}")
    assert {d.kind for _, _, d in res.report.decisions} >= {"norm", "contract", "local"}
    agents(tmp_path / "dist")
    sess = sessions(tmp_path / "dist", timeout_s=30)
    s = zoo.english_sentences(12)
    for feeds in (zoo.sentence_inputs(s[:2]), zoo.sentence_inputs(s[2:12])):
        shape = feeds["input_ids"].shape
        assert_same(sess.submit(feeds).result(30), reference(minilm_path, feeds), f"MiniLM channel split, {shape}")


@pytest.mark.models
@pytest.mark.parametrize("n,replicate", [(2, 0.0), (4, 0.0), (2, 0.05)])
def test_efficientnet_channel_split_through_agents(n, replicate, efficientnet_lite0_path, tmp_path, agents, sessions):
    """EfficientNet-Lite0 split by output channels over 2 and 4 agent processes, partial sums where
    they are fewer bytes (and with the stem and block 0 replicated on both devices): the same answers
    as one onnxruntime session on real photo crops."""
    from edgepart.testing import zoo
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.model.graph import analyse, load_model

    model, part = load_model(efficientnet_lite0_path), None
    if replicate:
        from edgepart.packager.strategies.channel.restructure import replicate as replicate_first

        r = replicate_first(model, n, replicate, input_shapes={"input": (1, 3, 224, 224)})
        assert r.report.nodes
        model, part = r.model, r.partition
    cluster = load_cluster(write_cluster(tmp_path / "cluster.yaml", [f"dev{i}" for i in range(n)], [1.0] * n))
    res = package_channel(model, analyse(model, {"input": (1, 3, 224, 224)}), cluster, tmp_path / "dist", part,
                          model_name=f"channel-effnet-{RUN}-{n}-{replicate:g}")
    assert any(d.partial for _, _, d in res.report.decisions)
    agents(tmp_path / "dist")
    sess = sessions(tmp_path / "dist", timeout_s=30)
    photos = zoo.imagenet_inputs(3)["input"]
    for i in range(len(photos)):
        feeds = {"input": photos[i:i + 1]}
        assert_same(sess.submit(feeds).result(30), reference(efficientnet_lite0_path, feeds), f"EfficientNet, {n} devices")


@pytest.mark.parametrize("codec,atol", [("bitmap", 1e-5), ("auto", 1e-5), ("fp16", 5e-2), ("int8", 2e-1)])
def test_wire_codecs_through_agents(codec, atol, tmp_path, agents, sessions):
    from edgepart.packager.strategies.pipeline.compiler import package, prepare

    model = graphs.residual()
    path = _save(model, tmp_path)
    prep = prepare(path, write_cluster(tmp_path / "cluster.yaml", ["dev0", "dev1"], [1.0, 1.0]), "throughput")
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist",
                  model_name=f"codec-{RUN}-{codec}", wire_codec=codec)
    kinds = {r.codec.kind for r in res.plan.routes if "@caller" not in (r.src, r.dst)}
    if codec == "auto":  # chosen per route: bitmap where a ReLU's output crosses
        assert "bitmap" in kinds and kinds <= {"bitmap", "dense"}, kinds
    else:
        assert kinds == {codec}
    agents(tmp_path / "dist")
    sess = sessions(tmp_path / "dist", timeout_s=10)
    feeds = seeded_feeds(res.plan, 0)
    want = reference(path, feeds)
    got = sess.submit(feeds).result(15)
    for k in want:
        diff = float(np.max(np.abs(got[k] - want[k])))
        assert diff <= atol, f"{codec}: {k} differs by {diff}"
