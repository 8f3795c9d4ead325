"""The channel split of transformer blocks is exact: a BERT-like encoder built in code (embeddings,
multi-head attention with three forms of the heads Reshape, GELU MLP, LayerNorms), split for 2, 3 and
4 devices with the default and random head-aligned partitions, run from its bundles with
LocalCluster at other batch sizes and lengths; attention stays local per head, LayerNorms exchange
statistics, down-projections send partial sums."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from edgepart.local import LocalCluster
from edgepart.packager.strategies.channel.compiler import compile_channel, package_channel
from edgepart.packager.strategies.channel._layout import partitionable
from edgepart.packager.model.graph import analyse
from edgepart.plan import CALLER

from test_channel import ATOL, F32, I64, _B, check_program, cluster, run_whole  # noqa: E402  (shared helpers)

pytestmark = pytest.mark.timeout(120)


HIDDEN, HEADS, MLP, VOCAB = 24, 6, 48, 30  # heads of 4: 24 over 4 devices is 1.5 heads, so not contiguous
DH = HIDDEN // HEADS


def transformer(seed=0, layers=2) -> onnx.ModelProto:
    """A BERT-like encoder as exported by torch: word and position embeddings, LayerNorm, then per
    layer Q/K/V projections reshaped to heads (the target shape computed from Shape with -1, a
    constant [0, 0, heads, dh], and a computed one with -1 on the inner axis), Q·K^T of two
    activations, a scale, an attention-mask bias broadcast over heads, Softmax, P·V, heads merged back,
    output projection, residual Add, LayerNorm, a GELU MLP (Div/Erf/Add/Mul/Mul), residual, LayerNorm.
    Outputs the last hidden state and its mean over the sequence."""
    b = _B(seed)
    ln = lambda x: b.n("LayerNormalization", [x, b.c(b.rng.uniform(0.5, 1.5, HIDDEN), np.float32),  # noqa: E731
                                              b.c(b.rng.normal(0, 0.1, HIDDEN), np.float32)], axis=-1, epsilon=1e-12)
    lin = lambda x, i, o: b.n("Add", [b.w((o,), 0.1), b.n("MatMul", [x, b.w((i, o))])])  # noqa: E731
    f = lambda v: b.c(np.array(v, np.float32), np.float32)  # noqa: E731
    shape = b.n("Shape", ["ids"])
    batch = b.n("Unsqueeze", [b.n("Gather", [shape, b.c(0)], axis=0), b.c([0])])
    seq = b.n("Unsqueeze", [b.n("Gather", [shape, b.c(1)], axis=0), b.c([0])])
    pos = b.n("Unsqueeze", [b.n("Range", [b.c(0), b.n("Squeeze", [seq, b.c([0])]), b.c(1)]), b.c([0])])
    emb = b.n("Gather", [b.w((VOCAB, HIDDEN), 1.0), "ids"])
    h = ln(b.n("Add", [emb, b.n("Gather", [b.w((16, HIDDEN), 1.0), pos])]))
    m = b.n("Unsqueeze", [b.n("Cast", ["mask"], to=F32), b.c([1, 2])])
    bias = b.n("Mul", [b.n("Sub", [f(1.0), m]), f(-10000.0)])  # [B, 1, 1, S]
    for layer in range(layers):
        computed = b.n("Concat", [batch, seq, b.c([-1]), b.c([DH])], axis=0)
        to_heads = [computed, b.c([0, 0, HEADS, DH]), b.n("Concat", [batch, seq, b.c([HEADS]), b.c([-1])], axis=0)]
        if layer % 2:
            to_heads = to_heads[1:] + to_heads[:1]
        q, k, v = (b.n("Reshape", [lin(h, HIDDEN, HIDDEN), t]) for t in to_heads)
        q = b.n("Transpose", [q], perm=[0, 2, 1, 3])
        k = b.n("Transpose", [k], perm=[0, 2, 3, 1])
        v = b.n("Transpose", [v], perm=[0, 2, 1, 3])
        att = b.n("Add", [b.n("Mul", [b.n("MatMul", [q, k]), f(1 / np.sqrt(DH))]), bias])
        ctx = b.n("Transpose", [b.n("MatMul", [b.n("Softmax", [att], axis=-1), v])], perm=[0, 2, 1, 3])
        merge = b.n("Concat", [batch, seq, b.c([-1])], axis=0) if layer % 2 == 0 else b.c([0, 0, HIDDEN])
        h = ln(b.n("Add", [lin(b.n("Reshape", [ctx, merge]), HIDDEN, HIDDEN), h]))
        up = lin(h, HIDDEN, MLP)
        erf = b.n("Erf", [b.n("Div", [up, f(np.sqrt(2))])])
        gelu = b.n("Mul", [b.n("Mul", [up, b.n("Add", [erf, f(1.0)])]), f(0.5)])
        h = ln(b.n("Add", [lin(gelu, MLP, HIDDEN), h]))
    pooled = b.n("ReduceMean", [h], axes=[1], keepdims=0)
    g = helper.make_graph(b.nodes, "transformer",
                          [helper.make_tensor_value_info("ids", I64, ["batch", "seq"]),
                           helper.make_tensor_value_info("mask", I64, ["batch", "seq"])],
                          [helper.make_tensor_value_info(h, F32, ["batch", "seq", HIDDEN]),
                           helper.make_tensor_value_info(pooled, F32, ["batch", HIDDEN])], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def transformer_feeds(batch=2, seq=5, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, seq - 2:] = 0  # padding in the first sequence
    return {"ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64), "mask": mask}


# -- transformer blocks ------------------------------------------------------------------------------

def head_aligned_partition(model, graph, n, seed) -> dict[str, np.ndarray]:
    """Random whole heads for Q, K and V (the same per layer), random channels for everything else."""
    rng = np.random.default_rng(seed)
    names = list(partitionable(model, graph))
    part = {}
    for i, t in enumerate(names):
        if i % 6 == 0:  # Q of a layer: 6 split layers per layer (Q, K, V, out, up, down)
            heads = np.repeat(rng.integers(0, n, HEADS), DH)
        part[t] = heads if i % 6 < 3 else rng.integers(0, n, partitionable(model, graph)[t])
    return part


def run_transformer(model, n, tmp_path, partition=None, plan_shape=(2, 5), run_shapes=((2, 5),)):
    graph = analyse(model, {"ids": plan_shape, "mask": plan_shape})
    res = package_channel(model, graph, cluster(n), tmp_path / "dist", partition, model_name="transformer")
    lc = LocalCluster.from_dist(tmp_path / "dist")
    for shape in run_shapes:
        f = transformer_feeds(*shape)
        want = run_whole(model, f)
        got = lc.run(f)
        for k, v in want.items():
            assert got[k].shape == v.shape
            assert np.max(np.abs(got[k] - v)) <= ATOL, (n, shape, k, np.max(np.abs(got[k] - v)))
    check_program(res.plan)
    return res


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("partition", ["default", "heads"])
def test_transformer_exact(n, partition, tmp_path):
    """Attention split by heads, MLP by neurons, LayerNorm by exchanged statistics: exact, also at a
    batch and sequence length other than the planned ones (the steps keep symbolic dims)."""
    model = transformer()
    part = head_aligned_partition(model, analyse(model, {"ids": (2, 5), "mask": (2, 5)}), n, seed=n) \
        if partition == "heads" else None
    res = run_transformer(model, n, tmp_path, part, run_shapes=((2, 5), (3, 7), (1, 1)))
    assert {st.device for st in res.plan.steps} == {f"dev{i}" for i in range(n)}
    assert not [op for _, op, d in res.report.decisions if d.kind == "whole"]  # nothing gathered
    assert not [r for r in res.report.routes if "Reshape" in r.tensor.split("@")[0]]  # heads never travel


def test_transformer_decisions_and_bytes():
    """LayerNorms are `norm` (two numbers per token and device pair), attention needs no message (the
    heads stay where Q, K and V were computed), and the default partition keeps whole heads together
    even where contiguous blocks would cut one (24 channels over 4 devices)."""
    model = transformer(layers=1)
    graph = analyse(model, {"ids": (2, 5), "mask": (2, 5)})
    prog = compile_channel(model, graph, cluster(4))
    lay = prog.layout
    kinds = {(op, d.kind) for _, op, d in prog.report.decisions if d.kind != "rep"}
    assert kinds == {("MatMul", "contract"), ("LayerNormalization", "norm"), ("Gather", "local"),
                     ("Reshape", "local"), ("MatMul", "local")}  # embeddings, heads, Q·K^T and P·V listed
    notes = [d.note for _, op, d in prog.report.decisions if op == "Reshape"]
    assert notes[0].endswith("2, 2, 1, 1 per device") and "merged" in notes[-1]
    q, k, v = list(lay.partition)[:3]
    assert np.array_equal(lay.partition[q], np.repeat([0, 0, 1, 1, 2, 3], DH))  # heads 2, 2, 1, 1
    assert np.array_equal(lay.partition[q], lay.partition[k]) and np.array_equal(lay.partition[q], lay.partition[v])
    stats = [r for r in prog.report.routes if r.tensor.endswith(":stats")]
    # the last LayerNorm (its output pooled per channel): each device to each other; the two whose
    # output Q/K/V and the MLP read whole send their input instead (test_layernorm_input_crosses)
    assert len(stats) == 1 * 4 * 3
    assert {r.size_bytes for r in stats} == {2 * 5 * 2 * 4}  # batch 2 x seq 5 tokens: mean and variance
    # what crosses: the inputs of the split projections or their partial sums (or, for a LayerNorm
    # before them, its input), the statistics, the outputs (to one device)
    read = {lay.info.contraction(nd.name).x for nd, d in zip(graph.nodes, lay.decisions) if d.kind == "contract"}
    read |= {nd.inputs[0] for nd in graph.nodes if nd.op_type == "LayerNormalization" and nd.outputs[0] in read}
    outputs = {o.name for o in graph.outputs}
    for r in prog.report.routes:
        base = r.tensor.split("@")[0]
        assert CALLER in (r.src, r.dst) or base in read | outputs or r.tensor.endswith((":stats", ":partial")), r.tensor


def test_layernorm_input_crosses_when_every_device_reads_the_output():
    """A LayerNorm whose output every device reads whole (the Q/K/V and MLP-up projections after it):
    its input's channels cross instead of statistics then output channels, one exchange fewer and
    no more bytes; each device normalises the whole tensor. The last one (pooled per channel, then
    gathered on one device) keeps exchanging statistics."""
    model = transformer(layers=1)
    graph = analyse(model, {"ids": (2, 5), "mask": (2, 5)})
    prog = compile_channel(model, graph, cluster(4))
    norms = [nd for nd in graph.nodes if nd.op_type == "LayerNormalization"]
    notes = {name: d.note for name, op, d in prog.report.decisions if op == "LayerNormalization"}
    gathered = [nd for nd in norms if "one exchange instead of two" in notes[nd.name]]
    assert gathered == norms[:2]
    bases = [(r.tensor.split("@")[0], r.src, r.dst) for r in prog.report.routes if CALLER not in (r.src, r.dst)]
    for nd in gathered:
        assert not [b for b in bases if b[0] == nd.outputs[0]]  # the output never crosses
        sent = {(s, d) for b, s, d in bases if b == nd.inputs[0]}
        assert len(sent) == 4 * 3  # the input, from each device to each other
        assert not [r for r in prog.report.routes if r.tensor.startswith(nd.inputs[0] + "@") and r.tensor.endswith(":stats")]


def test_transformer_heads_not_aligned(tmp_path):
    """A partition that cuts heads: each head goes to the device holding most of its channels, which
    receives the rest before the reshape; still exact, and noted."""
    model = transformer(layers=1)
    graph = analyse(model, {"ids": (2, 5), "mask": (2, 5)})
    q = next(iter(partitionable(model, graph)))
    res = run_transformer(model, 3, tmp_path, {q: np.arange(HIDDEN) % 3})  # every head on three devices
    assert any("groups of 4 channels" in note for note in res.report.notes)
    reshaped = [nd.inputs[0] for nd in graph.nodes if nd.op_type == "Reshape"][:3]  # Q, K, V before the heads
    assert {r.tensor.split("@")[0] for r in res.report.routes} >= set(reshaped)


def test_partial_sums_for_down_projections(tmp_path):
    """The MLP's down-projection (48 -> 24 neurons) over 2 devices: each device sends the other the
    12 partial output channels it computes from its own 24 hidden neurons, instead of those 24
    neurons; the up-projection (24 -> 48) and Q, K, V (which share their input) still receive inputs."""
    model = transformer(layers=1)
    res = run_transformer(model, 2, tmp_path)
    contract = [(name, d) for name, op, d in res.report.decisions if d.kind == "contract"]
    assert [d.partial for _, d in contract] == [()] * 5 + [((0, 1), (1, 0))]
    assert "B fewer" in contract[-1][1].note
    per_token = 2 * 5 * 4  # bytes of one channel: batch 2 x seq 5 float32
    partials = [r for r in res.report.routes if r.tensor.endswith(":partial")]
    assert sorted((r.src, r.dst, r.size_bytes) for r in partials) == [("dev0", "dev1", 12 * per_token),
                                                                        ("dev1", "dev0", 12 * per_token)]
    hidden = res.program.layout.info.contraction(contract[-1][0]).x
    assert not [r for r in res.report.routes if r.tensor.split("@")[0] == hidden]  # the hidden neurons stay
    down = res.report.layers.layers[-1]  # used: what its weights read; sent: what the layer sends
    assert (down.dense_bytes, down.used_bytes, down.sent_bytes, down.partial_bytes) == (
        2 * 24 * per_token, 2 * 24 * per_token, 2 * 12 * per_token, 2 * 12 * per_token)
    (down,) = [d for d in res.report.to_dict()["decisions"] if d["partial_sums"]]
    assert down["partial_sums"] == [["dev1", "dev0"], ["dev0", "dev1"]]  # [sender, receiver]



def test_both_halves_on_two_devices(tmp_path):
    """On 2 devices, a down-projection exchanging partial sums both ways whose output (after the
    residual Add) each device reads whole next also sends its own product: both devices sum the
    whole output, the residual stream's all-gather disappears (one exchange fewer), as many bytes,
    exact. The last layer's (its LayerNorm exchanges statistics, nobody reads it whole) does not."""
    from edgepart.packager.strategies.channel.compiler import _cross_bytes
    from edgepart.packager.strategies.channel._emitter import Emitter
    from edgepart.packager.strategies.channel._norm import norms_to_gather

    model = transformer(layers=2)
    res = run_transformer(model, 2, tmp_path)
    graph = analyse(model, {"ids": (2, 5), "mask": (2, 5)})
    downs = [name for name, op, d in res.report.decisions if d.partial]
    notes = {name: d.note for name, op, d in res.report.decisions}
    assert len(downs) == 2 and "both halves" in notes[downs[0]] and "both halves" not in notes[downs[1]]
    y = next(nd.outputs[0] for nd in graph.nodes if nd.name == downs[0])
    add = next(nd.outputs[0] for nd in graph.nodes if nd.op_type == "Add" and y in nd.inputs)  # + bias or residual
    crossing = {r.tensor.split("@")[0] for r in res.report.routes if CALLER not in (r.src, r.dst)}
    assert add not in crossing
    assert {r.src for r in res.report.routes if r.tensor.startswith(y + "@") and r.tensor.endswith(":own")} == {"dev0", "dev1"}
    # the same layout emitted without both halves: as many bytes
    lay = res.program.layout
    first = Emitter(lay, ["dev0", "dev1"], None)
    first.emit()
    first = Emitter(lay, ["dev0", "dev1"], None, norms_to_gather(first))
    first.emit()
    plain = Emitter(lay, ["dev0", "dev1"], first.demand, first.gather_norm)
    plain.emit()
    assert _cross_bytes(plain) == res.report.cross_device_bytes


def test_fewer_rounds_off_is_the_plain_compilation():
    """`fewer_rounds=False` exchanges every LayerNorm's statistics and gathers after partial sums (the
    plans before issue 10, for comparisons): more steps, no fewer bytes."""
    model = transformer(layers=2)
    graph = analyse(model, {"ids": (2, 5), "mask": (2, 5)})
    for n in (2, 4):
        plain = compile_channel(model, graph, cluster(n), fewer_rounds=False)
        fewer = compile_channel(model, graph, cluster(n))
        assert sum(r.tensor.endswith(":stats") for r in plain.report.routes) == 5 * n * (n - 1)
        assert len(fewer.steps) < len(plain.steps)
        assert fewer.report.cross_device_bytes <= plain.report.cross_device_bytes
