"""The channel split is exact and sends only what the weights use: small CNNs built in code, split
for 2, 3 and 4 devices with the default and random partitions, packaged into bundles, run chained
with LocalCluster and compared with the whole model in onnxruntime; zeroed weight columns cut the
routed bytes by exactly the channels they no longer read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepart.errors import PlanningError
from edgepart.local import LocalCluster
from edgepart.plan import CALLER
from edgepart.packager.strategies.channel.compiler import channel_bytes, compile_channel, package_channel
from edgepart.packager.strategies.channel._layout import partitionable, plan_layout
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.model.graph import analyse
from edgepart.packager.check.verify import verify

pytestmark = pytest.mark.timeout(120)

ATOL = 1e-4
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


# -- models ------------------------------------------------------------------------------------------

class _B:
    """A tiny graph builder: seeded weights, named nodes."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.i = [], [], 0

    def w(self, shape, scale=None) -> str:
        name = f"w{len(self.inits)}"
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = self.rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(max(fan, 1)))
        self.inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def c(self, arr, dtype=np.int64) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def n(self, op, ins, **attrs) -> str:
        self.i += 1
        out = f"{op.lower()}{self.i}"
        self.nodes.append(helper.make_node(op, list(ins), [out], name=f"{op}_{self.i}", **attrs))
        return out

    def conv(self, x, cin, cout, k=3, bias=True, group=1, **attrs) -> str:
        ins = [x, self.w((cout, cin // group, k, k))] + ([self.w((cout,), 0.1)] if bias else [])
        return self.n("Conv", ins, pads=[k // 2] * 4, group=group, **attrs)

    def bn(self, x, c) -> str:
        s, b = self.c(self.rng.uniform(0.5, 1.5, c), np.float32), self.c(self.rng.normal(0, 0.1, c), np.float32)
        m, v = self.c(self.rng.normal(0, 0.1, c), np.float32), self.c(self.rng.uniform(0.5, 1.5, c), np.float32)
        return self.n("BatchNormalization", [x, s, b, m, v])

    def model(self, name, x_shape, y, y_shape=None) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("x", F32, x_shape)],
                              [helper.make_tensor_value_info(y, F32, y_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        if y_shape is None:  # take the output's shape from onnx's shape inference
            m.graph.output[0].CopyFrom(onnx.shape_inference.infer_shapes(m).graph.output[0])
        onnx.checker.check_model(m, full_check=True)
        return m


def chain(seed=0) -> onnx.ModelProto:
    """conv-bn-relu twice, pooling, relu6 (Clip), LeakyRelu, AveragePool: a split tensor is the output."""
    b = _B(seed)
    h = b.n("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    h = b.n("Relu", [b.bn(b.conv(h, 8, 12), 12)])
    h = b.n("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.n("Clip", [b.conv(h, 12, 10), b.c(0.0, np.float32), b.c(6.0, np.float32)])
    h = b.n("LeakyRelu", [b.conv(h, 10, 9, k=1)], alpha=0.1)
    y = b.n("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    return b.model("chain", [1, 3, 10, 10], y)


def residual(seed=0) -> onnx.ModelProto:
    """A residual block (identity shortcut), torch-style flatten (Shape-Gather-Reshape), a shape used
    across the channel axis (ConstantOfShape of Shape), Gemm classifier, Softmax."""
    b = _B(seed)
    r0 = b.n("Relu", [b.conv("x", 4, 8)])
    r1 = b.n("Relu", [b.conv(r0, 8, 8)])
    c2 = b.conv(r1, 8, 8)
    r2 = b.n("Relu", [b.n("Add", [c2, r0])])
    bias = b.n("ConstantOfShape", [b.n("Shape", [r2])], value=numpy_helper.from_array(np.array([0.25], np.float32)))
    r2 = b.n("Add", [r2, bias])
    c3 = b.conv(r2, 8, 6, k=1)
    g = b.n("GlobalAveragePool", [c3])
    batch = b.n("Unsqueeze", [b.n("Gather", [b.n("Shape", [g]), b.c(0)], axis=0), b.c([0])])
    f = b.n("Reshape", [g, b.n("Concat", [batch, b.c([-1])], axis=0)])
    logits = b.n("Gemm", [f, b.w((5, 6)), b.w((5,), 0.1)], transB=1)
    y = b.n("Softmax", [logits], axis=1)
    return b.model("residual", [1, 4, 8, 8], y)


def mobile(seed=0) -> onnx.ModelProto:
    """MobileNet/EfficientNet-like: HardSwish, spatial Pad with computed pads, depthwise conv, BN,
    squeeze-and-excite (GAP, 1x1 convs, Sigmoid, Mul), swish, Flatten + MatMul + Add classifier."""
    b = _B(seed)
    h = b.n("HardSwish", [b.conv("x", 3, 8)])
    pads = b.n("Identity", [b.c([0, 0, 1, 1, 0, 0, 1, 1])])
    h = b.n("Pad", [h, pads, b.c(0.0, np.float32)], mode="constant")
    dw = b.n("Conv", [h, b.w((8, 1, 3, 3)), b.w((8,), 0.1)], group=8, pads=[0] * 4)
    h = b.n("Relu", [b.bn(dw, 8)])
    h = b.conv(h, 8, 12, k=1)
    s = b.n("GlobalAveragePool", [h])
    s = b.n("Relu", [b.conv(s, 12, 4, k=1)])
    s = b.n("Sigmoid", [b.conv(s, 4, 12, k=1)])
    h = b.n("Mul", [h, s])
    h = b.n("Mul", [h, b.n("Sigmoid", [h])])
    h = b.n("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    f = b.n("Flatten", [h], axis=1)  # [1, 12*4*4]: each channel owns 16 features
    y = b.n("Add", [b.n("MatMul", [f, b.w((192, 7))]), b.w((7,), 0.1)])
    return b.model("mobile", [1, 3, 8, 8], y)


def branches(seed=0) -> onnx.ModelProto:
    """Two branches concatenated on the channel axis and added to a third (the Concat's derived
    partition differs from the third's: redistributed), then a Concat on a spatial axis, a Transpose,
    a channel Softmax over another axis, GlobalMaxPool and a Gemm."""
    b = _B(seed)
    stem = b.n("Relu", [b.conv("x", 3, 6)])
    side = b.conv(stem, 6, 9, k=1)  # made before the Concat it is added to: two partitions meet
    a = b.n("Relu", [b.conv(stem, 6, 4)])
    c = b.n("Relu", [b.conv(stem, 6, 5, k=1)])
    h = b.n("Add", [b.n("Concat", [a, c], axis=1), side])
    h = b.conv(h, 9, 7)
    h = b.n("Concat", [h, b.n("Neg", [h])], axis=2)  # [1, 7, 12, 6]
    h = b.n("Transpose", [h], perm=[0, 1, 3, 2])
    h = b.n("Softmax", [h], axis=3)
    h = b.n("Flatten", [b.n("GlobalMaxPool", [b.conv(h, 7, 6)])])
    y = b.n("Gemm", [h, b.w((6, 3)), b.w((3,), 0.1)])
    return b.model("branches", [1, 3, 6, 6], y)


def unknown(seed=0) -> onnx.ModelProto:
    """Ops that need the whole tensor: LRN (mixes channels), Softmax over channels, a Reshape across
    channels, a grouped (not depthwise) conv; the split resumes after them, and a gathered tensor
    added to a split one is scattered back."""
    b = _B(seed)
    h = b.n("Relu", [b.conv("x", 3, 8)])
    lrn = b.n("LRN", [h], size=3)
    h = b.n("Relu", [b.conv(lrn, 8, 8)])  # split again: the gathering device sends each its channels
    h = b.n("Add", [h, lrn])  # the whole tensor scattered back to the owners of each channel
    h = b.conv(h, 8, 8, group=2)
    h = b.n("Relu", [b.conv(h, 8, 6)])
    h = b.n("Softmax", [h], axis=1)
    h = b.n("Reshape", [h, b.c([1, 3, 12, 8])])  # channels folded into space
    y = b.n("ReduceMean", [b.conv(h, 3, 4)], axes=[1], keepdims=1)
    return b.model("unknown", [1, 3, 6, 8], y)


def norms(seed=0) -> onnx.ModelProto:
    """LayerNormalization over [C, H, W] (across the split channels: statistics exchanged) and over
    [H, W] only (per channel: local), between convs; a 1x1 conv that halves the channels."""
    b = _B(seed)
    h = b.n("Relu", [b.conv("x", 3, 8)])
    h = b.n("LayerNormalization", [h, b.c(b.rng.uniform(0.5, 1.5, (8, 6, 6)), np.float32),
                                   b.c(b.rng.normal(0, 0.1, (8, 6, 6)), np.float32)], axis=1)
    h = b.conv(h, 8, 10)
    h = b.n("LayerNormalization", [h, b.c(b.rng.uniform(0.5, 1.5, (6,)), np.float32)], axis=-2)
    y = b.n("Relu", [b.conv(h, 10, 4, k=1)])
    return b.model("norms", [1, 3, 6, 6], y)


MODELS = {"chain": chain, "residual": residual, "mobile": mobile, "branches": branches, "unknown": unknown,
          "norms": norms}


# -- helpers -----------------------------------------------------------------------------------------

def cluster(n: int):
    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": 1 + i} for i in range(n)],
                              "links": {"default": {"bandwidth_mbps": 100, "latency_ms": 0.5}}})


def feeds(model: onnx.ModelProto, seed=1) -> dict[str, np.ndarray]:
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def run_whole(model, f) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, f)))


def random_partition(model, graph, n, seed) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t: rng.integers(0, n, c) for t, c in partitionable(model, graph).items()}


def split_and_run(model, n, tmp_path: Path, partition=None, f=None):
    graph = analyse(model)
    res = package_channel(model, graph, cluster(n), tmp_path / "dist", partition, model_name=model.graph.name)
    f = f or feeds(model)
    got = LocalCluster.from_dist(tmp_path / "dist").run(f)
    return res, got, run_whole(model, f)


def check_program(plan):
    """Every step input is local, routed in from its producer, or a model input from the caller; names
    are unique; every model output goes to the caller."""
    made = {}
    for st in plan.steps:
        for o in st.outputs:
            assert o.name not in made, f"{o.name} made twice"
            made[o.name] = st.device
    routes = {(r.tensor, r.src, r.dst) for r in plan.routes}
    assert len(routes) == len(plan.routes)
    inputs = {i.name for i in plan.inputs}
    for st in plan.steps:
        for i in st.inputs:
            src = CALLER if i.name in inputs else made[i.name]
            assert src == st.device or (i.name, src, st.device) in routes, (st.name, i.name)
    for o in plan.outputs:
        assert (o.name, made[o.name], CALLER) in routes
    for r in plan.routes:
        assert r.codec.kind == "dense"
        assert r.src == CALLER or made[r.tensor] == r.src


# -- exactness ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("name", list(MODELS))
def test_exact_default_partition(name, n, tmp_path):
    model = MODELS[name]()
    res, got, want = split_and_run(model, n, tmp_path)
    for k, v in want.items():
        assert got[k].shape == v.shape
        assert np.max(np.abs(got[k] - v)) <= ATOL, (name, n, k)
    assert res.plan.strategy == "channel"
    check_program(res.plan)
    assert {st.device for st in res.plan.steps} == {f"dev{i}" for i in range(n)}  # every device works


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("name", list(MODELS))
def test_exact_random_partition(name, n, tmp_path):
    """Interleaved channels, devices with no channel of some layer, residual classes overridden."""
    model = MODELS[name]()
    part = random_partition(model, analyse(model), n, seed=n)
    res, got, want = split_and_run(model, n, tmp_path, part)
    for k, v in want.items():
        assert np.max(np.abs(got[k] - v)) <= ATOL, (name, n, k)
    check_program(res.plan)


def test_a_device_without_channels(tmp_path):
    model = chain()
    graph = analyse(model)
    part = {t: np.zeros(c, dtype=np.int64) for t, c in partitionable(model, graph).items()}
    first = next(iter(part))
    part[first] = np.arange(len(part[first])) % 3  # only the first layer uses dev1 and dev2
    res, got, want = split_and_run(model, 3, tmp_path, part)
    (k, v), = want.items()
    assert np.max(np.abs(got[k] - v)) <= ATOL
    check_program(res.plan)


def test_verify_and_other_batch_size(tmp_path):
    """`verify` (the CLI's check) agrees, and the steps keep the model's symbolic batch axis."""
    model = residual()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    graph = analyse(model, {"x": (1, 4, 8, 8)})
    package_channel(model, graph, cluster(3), tmp_path / "dist")
    for batch in (1, 5):
        f = {"x": np.random.default_rng(batch).standard_normal((batch, 4, 8, 8)).astype(np.float32)}
        v = verify(tmp_path / "dist", path, f, ATOL)
        assert v.ok and v.model_matches_plan, v.max_abs_diff


# -- what crosses devices ----------------------------------------------------------------------------

def test_weights_are_sliced_per_device(tmp_path):
    """Each device holds its rows of every split layer: the weights add up to the model's once."""
    model = chain()
    res = package_channel(model, analyse(model), cluster(2), tmp_path / "dist")
    total = sum(numpy_helper.to_array(i).size for i in model.graph.initializer if i.name.startswith("w"))
    per_dev = []
    for d in ("dev0", "dev1"):
        held = 0
        for st in res.plan.steps_of(d):
            m = onnx.load(str(tmp_path / "dist" / d / st.model_file))
            held += sum(numpy_helper.to_array(i).size for i in m.graph.initializer if i.name.startswith("w"))
        per_dev.append(held)
    assert sum(per_dev) == total
    assert max(per_dev) <= 0.6 * total
    report = res.report.to_dict()
    assert json.loads(json.dumps(report)) == report  # the report is plain JSON
    assert report["param_bytes"]["dev0"] >= 4 * per_dev[0]
    macs = sum(nd.macs for nd in analyse(model).nodes)
    assert 0.99 * macs <= sum(report["macs"].values()) <= 1.01 * macs  # split, not duplicated


def test_zeroed_columns_cut_routed_bytes(tmp_path):
    """conv1 reads r0; zero its dev1 rows on 3 of the 4 channels dev0 holds: the route r0 dev0 -> dev1
    carries exactly 1 channel, and channel_bytes says so; still exact."""
    model = chain()
    graph = analyse(model)
    f = feeds(model)
    w1 = next(i for i in model.graph.initializer if i.name == model.graph.node[3].input[1])  # second conv: 8 -> 12
    assert model.graph.node[3].op_type == "Conv"
    x_name = model.graph.node[3].input[0]
    before = channel_bytes(graph, None, model, n_devices=2)
    w = numpy_helper.to_array(w1).copy()
    w[6:, 0:3] = 0  # dev1 owns output channels 6..11; dev0 owns input channels 0..3
    w1.CopyFrom(numpy_helper.from_array(w, w1.name))
    after = channel_bytes(graph, None, model, n_devices=2)
    per_channel = 10 * 10 * 4  # one channel of [1, 8, 10, 10] float32
    row_b = {r.output: r for r in before.layers}
    row_a = {r.output: r for r in after.layers}
    layer = model.graph.node[3].output[0]
    assert row_b[layer].dense_bytes == row_a[layer].dense_bytes == 2 * 4 * per_channel
    assert row_b[layer].used_bytes == 8 * per_channel
    assert row_a[layer].used_bytes == 5 * per_channel
    assert after.used_bytes == before.used_bytes - 3 * per_channel
    assert before.ratio == before.dense_bytes / before.used_bytes

    res, got, want = split_and_run(model, 2, tmp_path, None, f)
    (k, v), = want.items()
    assert np.max(np.abs(got[k] - v)) <= ATOL
    routes = {(r.src, r.dst): r for r in res.report.routes if r.tensor.startswith(x_name + "@")}
    assert routes[("dev0", "dev1")].channels == 1 and routes[("dev0", "dev1")].size_bytes == per_channel
    assert routes[("dev1", "dev0")].channels == 4
    spec = next(o for st in res.plan.steps_of("dev0") for o in st.outputs if o.name == routes[("dev0", "dev1")].tensor)
    assert spec.shape[1] == 1  # the subset is cut on the sender: the wire carries one channel


def test_block_diagonal_weights_need_no_messages(tmp_path):
    """With every cross-device block zero, a conv chain runs without any device-to-device route."""
    model = chain()
    part = {}
    for nd in model.graph.node:
        if nd.op_type == "Conv":
            w_init = next(i for i in model.graph.initializer if i.name == nd.input[1])
            w = numpy_helper.to_array(w_init).copy()
            co, ci = w.shape[:2]
            rows, cols = np.arange(co) * 2 // co, np.arange(ci) * 2 // ci
            if nd.input[0] != "x":
                w[rows[:, None] != cols[None, :]] = 0
            w_init.CopyFrom(numpy_helper.from_array(w, w_init.name))
    res, got, want = split_and_run(model, 2, tmp_path, part)
    (k, v), = want.items()
    assert np.max(np.abs(got[k] - v)) <= ATOL
    cross = [r for r in res.report.routes if CALLER not in (r.src, r.dst)]
    assert [r.tensor for r in cross] == [k + "@dev1"]  # only the output's gather onto the caller's device
    assert channel_bytes(analyse(model), None, model, n_devices=2).used_bytes == 0
    assert len(res.plan.steps_of("dev0")) == 2 and len(res.plan.steps_of("dev1")) == 1  # one step, then the gather


def test_classifier_choice_is_recorded():
    """The classifier's output is only needed whole: the compiler compares split+gather, gather the input
    and reduce partial products, and takes the fewest bytes."""
    model = residual()
    prog = compile_channel(model, analyse(model), cluster(2))
    (gemm,) = [d for name, op, d in prog.report.decisions if op == "Gemm"]
    assert gemm.kind in ("whole", "reduce", "contract")
    assert len(gemm.options) == 1 + 2 + 2
    assert min(b for _, b in gemm.options) == dict(gemm.options)[gemm.note.split("chose ")[1]]


def test_residual_stream_keeps_one_partition():
    """A partition given for the conv that writes into the residual stream becomes the stream's, so
    the shortcut Add stays local: the shortcut tensor crosses only for the convs that read it."""
    model = residual()
    graph = analyse(model)
    names = list(partitionable(model, graph))  # conv0, conv1, conv2, conv3, gemm
    given = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    lay = plan_layout(model, graph, 2, {names[2]: given})
    assert np.array_equal(lay.partition[names[0]], given)  # conv0 writes r0, which is added to conv2's output
    assert np.array_equal(lay.partition[names[2]], given)
    lay = plan_layout(model, graph, 2, {names[2]: given, names[0]: 1 - given})
    assert np.array_equal(lay.partition[names[2]], 1 - given)  # the first given (topological) wins
    assert any("replaced" in note for note in lay.notes)


def test_unknown_ops_are_gathered():
    model = unknown()
    prog = compile_channel(model, analyse(model), cluster(3))
    kinds = [(op, d.kind) for _, op, d in prog.report.decisions]
    whole = {op: d for _, op, d in prog.report.decisions if d.kind == "whole"}
    assert {"LRN", "Softmax", "Reshape"} <= set(whole)
    assert "not a per-channel op" in whole["LRN"].note
    assert ("Conv", "contract") in kinds[kinds.index(("LRN", "whole")):]  # the split resumes after the gather
    lrn = whole["LRN"].device
    lrn_out = next(nd.output[0] for nd in model.graph.node if nd.op_type == "LRN")
    assert {r.dst for r in prog.report.routes if r.tensor == lrn_out} == {f"dev{i}" for i in range(3)} - {f"dev{lrn}"}


def test_partition_errors():
    model = chain()
    graph = analyse(model)
    with pytest.raises(PlanningError, match="not the output of a Conv/Gemm/MatMul"):
        plan_layout(model, graph, 2, {"relu2": np.zeros(8, dtype=np.int64)})
    first = next(iter(partitionable(model, graph)))
    with pytest.raises(PlanningError, match="int array of 8 device indices"):
        plan_layout(model, graph, 2, {first: np.zeros(7, dtype=np.int64)})
    with pytest.raises(PlanningError, match="0..1"):
        plan_layout(model, graph, 2, {first: np.full(8, 2)})


@pytest.mark.parametrize("codec,atol", [("bitmap", 0.0), ("fp16", 1e-2)])
def test_wire_codecs_on_device_routes(codec, atol, tmp_path):
    """Float activations between devices take the wire codec (the caller's routes stay dense)."""
    model = residual()
    graph = analyse(model)
    res = package_channel(model, graph, cluster(2), tmp_path / "dist", wire_codec=codec)
    kinds = {(r.src == CALLER or r.dst == CALLER, r.codec.kind) for r in res.plan.routes}
    assert kinds == {(True, "dense"), (False, codec)}
    f = feeds(model)
    got = LocalCluster.from_dist(tmp_path / "dist").run(f)
    (k, v), = run_whole(model, f).items()
    assert np.max(np.abs(got[k] - v)) <= max(atol, ATOL)
    with pytest.raises(PlanningError, match="Unknown wire codec"):
        compile_channel(model, graph, cluster(2), wire_codec="zip")


def test_auto_codec_on_device_routes(tmp_path):
    """`auto`: routes carrying channels of a ReLU's output are bitmap, partial sums and other
    tensors dense; the split stays exact."""
    model = chain()
    graph = analyse(model)
    res = package_channel(model, graph, cluster(3), tmp_path / "dist", wire_codec="auto")
    prog = compile_channel(model, graph, cluster(3), wire_codec="auto")
    between = [r for r in res.plan.routes if CALLER not in (r.src, r.dst)]
    kinds = {r.codec.kind for r in between}
    assert kinds == {"bitmap", "dense"}, kinds
    assert all(r.codec.kind == "dense" for r in res.plan.routes if CALLER in (r.src, r.dst))
    assert sorted((r.tensor, r.codec.kind) for r in prog.routes) == sorted((r.tensor, r.codec.kind) for r in res.plan.routes)
    f = feeds(model)
    got = LocalCluster.from_dist(tmp_path / "dist").run(f)
    (k, v), = run_whole(model, f).items()
    assert np.max(np.abs(got[k] - v)) <= ATOL


def test_partial_sums_only(tmp_path):
    """A device that holds none of a conv's input channels and 2 of its 12 output channels receives
    2 channels of partial sums (plus its bias, added locally) instead of all 8 input channels."""
    model = chain()
    graph = analyse(model)
    first, second = list(partitionable(model, graph))[:2]
    part = {first: np.zeros(8, dtype=np.int64), second: np.array([0] * 10 + [1] * 2)}
    res, got, want = split_and_run(model, 2, tmp_path, part)
    (k, v), = want.items()
    assert np.max(np.abs(got[k] - v)) <= ATOL
    per_channel = 10 * 10 * 4
    into_dev1 = [(r.tensor, r.size_bytes) for r in res.report.routes if r.dst == "dev1"]
    assert into_dev1[0] == (second + "@dev0>dev1:partial", 2 * per_channel)  # the first message dev1 gets
    (dec,) = [d for name, _, d in res.report.decisions if name == graph.nodes[graph.producer[second]].name]
    assert dec.partial == ((1, 0),) and "2400 B fewer" in dec.note  # 8 input channels vs 2 partial sums
