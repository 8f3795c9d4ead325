"""Small float32 ONNX models built in code (no model files are committed), for unit and CLI tests.

Every builder returns a checked `onnx.ModelProto` at opset 17 with at least 8 placeable nodes, so
each can be split in 4. Weights come from a seeded generator: the same call gives the same bytes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what opset 17 shipped with; every onnxruntime we support reads it
F32 = TensorProto.FLOAT
I64 = TensorProto.INT64

SHARED_WEIGHT = "W_shared"  # the initializer `shared_weight()` uses at both ends of the model


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
    w = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
    return numpy_helper.from_array(w.astype(np.float32), name)


def _model(name: str, nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                          producer_name="edgepart-tests")
    onnx.checker.check_model(m, full_check=True)
    return m


def _conv(name, x, w, y, pad=1, b=None):
    ins = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", ins, [y], name=name, pads=[pad] * 4)


# -- (a) a residual skip that crosses several cuts ---------------------------------------------------

def residual(seed: int = 0) -> onnx.ModelProto:
    """Conv chain whose node 7 adds node 1's output back: `r0` crosses every cut from 2 to 7."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "W0", (8, 4, 3, 3)), _weight(rng, "B0", (8,)),
        _weight(rng, "W1", (8, 8, 3, 3)), _weight(rng, "W2", (8, 8, 3, 3)), _weight(rng, "W3", (8, 8, 3, 3)),
        _weight(rng, "W4", (4, 8, 1, 1)), _weight(rng, "Wfc", (4, 3)),
    ]
    nodes = [
        _conv("conv0", "x", "W0", "c0", b="B0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        _conv("conv1", "r0", "W1", "c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        _conv("conv2", "r1", "W2", "c2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        _conv("conv3", "r2", "W3", "c3"),
        helper.make_node("Add", ["c3", "r0"], ["a"], name="skip_add"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        _conv("conv4", "r3", "W4", "c4", pad=0),
        helper.make_node("GlobalAveragePool", ["c4"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "Wfc"], ["y"], name="fc"),
    ]
    return _model("residual", nodes,
                  [helper.make_tensor_value_info("x", F32, [1, 4, 8, 8])],
                  [helper.make_tensor_value_info("y", F32, [1, 3])], inits)


# -- (b) two inputs, two outputs ---------------------------------------------------------------------

def two_in_two_out(seed: int = 0) -> onnx.ModelProto:
    """Inputs `a` and `b` (b read again near the end); output `y1` is also read by later nodes."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "Wa", (16, 16)), _weight(rng, "Wb", (8, 16)), _weight(rng, "Wc", (16, 16)),
             _weight(rng, "Wd", (16, 8)), _weight(rng, "We", (8, 4))]
    nodes = [
        helper.make_node("MatMul", ["a", "Wa"], ["ha"], name="mm_a"),
        helper.make_node("Relu", ["ha"], ["ra"], name="relu_a"),
        helper.make_node("MatMul", ["b", "Wb"], ["hb"], name="mm_b"),
        helper.make_node("Tanh", ["hb"], ["tb"], name="tanh_b"),
        helper.make_node("Add", ["ra", "tb"], ["s"], name="join"),
        helper.make_node("MatMul", ["s", "Wc"], ["hc"], name="mm_c"),
        helper.make_node("Sigmoid", ["hc"], ["y1"], name="sigmoid"),
        helper.make_node("MatMul", ["y1", "Wd"], ["hd"], name="mm_d"),
        helper.make_node("Relu", ["hd"], ["rd"], name="relu_d"),
        helper.make_node("Mul", ["rd", "b"], ["m"], name="gate_b"),
        helper.make_node("MatMul", ["m", "We"], ["y2"], name="mm_e"),
    ]
    return _model("two_in_two_out", nodes,
                  [helper.make_tensor_value_info("a", F32, [1, 16]), helper.make_tensor_value_info("b", F32, [1, 8])],
                  [helper.make_tensor_value_info("y1", F32, [1, 16]), helper.make_tensor_value_info("y2", F32, [1, 4])],
                  inits)


# -- (c) one initializer read at both ends -------------------------------------------------------------

def shared_weight(seed: int = 0) -> onnx.ModelProto:
    """`W_shared` is read by node 0 and node 9: any split in 3 or more puts them in different stages."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, SHARED_WEIGHT, (16, 16))] + [_weight(rng, f"W{i}", (16, 16)) for i in range(1, 5)]
    inits.append(numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias"))
    acts = ["Relu", "Tanh", "Relu", "Sigmoid"]
    nodes = [helper.make_node("MatMul", ["x", SHARED_WEIGHT], ["h0"], name="mm_shared_first")]
    cur = "h0"
    for i in range(1, 5):
        nodes.append(helper.make_node(acts[i - 1], [cur], [f"a{i}"], name=f"act{i}"))
        nodes.append(helper.make_node("MatMul", [f"a{i}", f"W{i}"], [f"h{i}"], name=f"mm{i}"))
        cur = f"h{i}"
    nodes.append(helper.make_node("MatMul", [cur, SHARED_WEIGHT], ["h9"], name="mm_shared_last"))
    nodes.append(helper.make_node("Add", ["h9", "bias"], ["y"], name="bias_add"))
    return _model("shared_weight", nodes,
                  [helper.make_tensor_value_info("x", F32, [1, 16])],
                  [helper.make_tensor_value_info("y", F32, [1, 16])], inits)


# -- (d) a branch that splits and rejoins --------------------------------------------------------------

def branch(seed: int = 0) -> onnx.ModelProto:
    """`r0` feeds two parallel chains, joined by Add, then concatenated with `r0` itself."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "W0", (6, 3, 3, 3)), _weight(rng, "Wa1", (6, 6, 3, 3)), _weight(rng, "Wa2", (6, 6, 3, 3)),
             _weight(rng, "Wb1", (6, 6, 1, 1)), _weight(rng, "Wc", (4, 12, 1, 1))]
    nodes = [
        _conv("conv0", "x", "W0", "c0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        _conv("a_conv1", "r0", "Wa1", "a1"),
        helper.make_node("Relu", ["a1"], ["a2"], name="a_relu"),
        _conv("a_conv2", "a2", "Wa2", "a3"),
        _conv("b_conv1", "r0", "Wb1", "b1", pad=0),
        helper.make_node("Sigmoid", ["b1"], ["b2"], name="b_sigmoid"),
        helper.make_node("Tanh", ["b2"], ["b3"], name="b_tanh"),
        helper.make_node("Add", ["a3", "b3"], ["s"], name="join_add"),
        helper.make_node("Concat", ["s", "r0"], ["cat"], name="join_concat", axis=1),
        _conv("conv_out", "cat", "Wc", "c_out", pad=0),
        helper.make_node("Relu", ["c_out"], ["y"], name="relu_out"),
    ]
    return _model("branch", nodes,
                  [helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])], inits)


# -- (e) a symbolic batch axis that the graph reads back ---------------------------------------------------

def symbolic_batch(seed: int = 0) -> onnx.ModelProto:
    """torch's `bs = x.size(0); ...; x.view(bs, -1)`: Shape -> Gather -> Unsqueeze early, Concat ->
    Reshape late, so the int64 shape tensors cross every cut in between (the trap that makes
    `onnx.utils.extract_model` fail on such models: a cut leaves a Shape node reading a tensor that
    lives in an earlier stage)."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "W0", (8, 4, 3, 3)), _weight(rng, "W1", (8, 8, 3, 3)), _weight(rng, "Wfc", (72, 10)),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "bfc"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["idx0"], name="const_idx0",
                         value=numpy_helper.from_array(np.array(0, dtype=np.int64))),
        helper.make_node("Constant", [], ["minus1"], name="const_minus1",
                         value=numpy_helper.from_array(np.array([-1], dtype=np.int64))),
        helper.make_node("Shape", ["x"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "idx0"], ["bs"], name="gather_bs", axis=0),
        helper.make_node("Unsqueeze", ["bs", "axes0"], ["bs1"], name="unsqueeze_bs"),
        _conv("conv0", "x", "W0", "c0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        _conv("conv1", "r0", "W1", "c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["bs1", "minus1"], ["newshape"], name="concat_shape", axis=0),
        helper.make_node("Reshape", ["p", "newshape"], ["flat"], name="view"),
        helper.make_node("MatMul", ["flat", "Wfc"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "bfc"], ["y"], name="fc_bias"),
    ]
    return _model("symbolic_batch", nodes,
                  [helper.make_tensor_value_info("x", F32, ["N", 4, 6, 6])],
                  [helper.make_tensor_value_info("y", F32, ["N", 10])], inits)


# -- (f) a transformer-like block ---------------------------------------------------------------------------

def transformer(seed: int = 0, seq: int = 8, dim: int = 16, hidden: int = 32) -> onnx.ModelProto:
    """One attention head, a hand-written layer norm (no LayerNormalization op) and an MLP, with two
    residual adds; default-domain opset-17 ops only."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, n, (dim, dim)) for n in ("Wq", "Wk", "Wv", "Wo")]
    inits += [_weight(rng, "W1", (dim, hidden)), _weight(rng, "W2", (hidden, dim))]
    inits += [
        numpy_helper.from_array(np.float32(1 / np.sqrt(dim)).reshape(()), "scale"),
        numpy_helper.from_array(np.float32(1e-5).reshape(()), "eps"),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32), "gamma"),
        numpy_helper.from_array((0.1 * rng.standard_normal(dim)).astype(np.float32), "beta"),
        numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), "b1"),
        numpy_helper.from_array((0.1 * rng.standard_normal(dim)).astype(np.float32), "b2"),
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
        n("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
        n("MatMul", ["x", "Wv"], ["v"], name="v_proj"),
        n("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["scores"], name="qk"),
        n("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        n("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v"], ["att"], name="pv"),
        n("MatMul", ["att", "Wo"], ["o"], name="o_proj"),
        n("Add", ["o", "x"], ["h1"], name="residual1"),
        n("ReduceMean", ["h1"], ["mu"], name="ln_mean", axes=[-1], keepdims=1),
        n("Sub", ["h1", "mu"], ["d"], name="ln_center"),
        n("Mul", ["d", "d"], ["d2"], name="ln_square"),
        n("ReduceMean", ["d2"], ["var"], name="ln_var", axes=[-1], keepdims=1),
        n("Add", ["var", "eps"], ["ve"], name="ln_eps"),
        n("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
        n("Div", ["d", "sd"], ["nrm"], name="ln_div"),
        n("Mul", ["nrm", "gamma"], ["g"], name="ln_gamma"),
        n("Add", ["g", "beta"], ["ln"], name="ln_beta"),
        n("MatMul", ["ln", "W1"], ["m1"], name="mlp_up"),
        n("Add", ["m1", "b1"], ["m2"], name="mlp_up_bias"),
        n("Relu", ["m2"], ["m3"], name="mlp_act"),
        n("MatMul", ["m3", "W2"], ["m4"], name="mlp_down"),
        n("Add", ["m4", "b2"], ["m5"], name="mlp_down_bias"),
        n("Add", ["m5", "ln"], ["y"], name="residual2"),
    ]
    return _model("transformer", nodes,
                  [helper.make_tensor_value_info("x", F32, [1, seq, dim])],
                  [helper.make_tensor_value_info("y", F32, [1, seq, dim])], inits)


# -- (g) tensors computed from constants alone --------------------------------------------------------------

def constant_chains(seed: int = 0) -> onnx.ModelProto:
    """What exporters compute from constants alone, each read late in the model: a weight read again
    through Identity (torch's shared parameter), a Transpose and a Reshape of weights, a Cast of a
    float64 bias, an Unsqueeze of a vector, Shape arithmetic on a weight that builds a Reshape target,
    and Constant-node arithmetic (Mul, ConstantOfShape). Unfolded, any cut between the top of the
    model and its end would send one of them with every request."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "W_shared", (8, 8)), _weight(rng, "W1", (8, 8)), _weight(rng, "W2", (8, 8)),
        _weight(rng, "W3_t", (8, 8)),
        numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "W4_flat"),
        numpy_helper.from_array(rng.standard_normal(8), "bias64"),  # float64: Cast to float32 below
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "vec"),
        numpy_helper.from_array(np.array([8, 8], dtype=np.int64), "w4_shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "idx1"),
    ]
    n = helper.make_node
    nodes = [
        n("Constant", [], ["c_two"], name="const_two", value=numpy_helper.from_array(np.array(2.0, dtype=np.float32))),
        n("Constant", [], ["c_quarter"], name="const_quarter",
          value=numpy_helper.from_array(np.array(0.25, dtype=np.float32))),
        n("Constant", [], ["c_minus1"], name="const_minus1", value=numpy_helper.from_array(np.array([-1], dtype=np.int64))),
        # the model's work starts here; the constant-only nodes are spread between its nodes, as exporters write them
        n("MatMul", ["x", "W_shared"], ["h0"], name="mm_shared_first"),
        n("Identity", ["W_shared"], ["W_shared_again"], name="identity_shared"),
        n("Relu", ["h0"], ["a0"], name="relu0"),
        n("Transpose", ["W3_t"], ["W3"], name="transpose_weight", perm=[1, 0]),
        n("MatMul", ["a0", "W1"], ["h1"], name="mm1"),
        n("Reshape", ["W4_flat", "w4_shape"], ["W4"], name="reshape_weight"),
        n("Cast", ["bias64"], ["bias"], name="cast_bias", to=F32),
        n("Tanh", ["h1"], ["a1"], name="tanh1"),
        n("Unsqueeze", ["vec", "axes0"], ["row"], name="unsqueeze_vec"),
        n("Shape", ["W2"], ["w2_shape"], name="shape_of_weight"),
        n("Gather", ["w2_shape", "idx1"], ["w2_cols"], name="gather_cols", axis=0),
        n("Concat", ["c_minus1", "w2_cols"], ["target"], name="concat_target", axis=0),
        n("Mul", ["c_two", "c_quarter"], ["scale"], name="const_mul"),
        n("ConstantOfShape", ["w2_cols"], ["ones"], name="ones_of_shape",
          value=numpy_helper.from_array(np.array([1.0], dtype=np.float32))),
        n("MatMul", ["a1", "W2"], ["h2"], name="mm2"),
        n("Reshape", ["h2", "target"], ["h2r"], name="reshape_act"),
        n("Mul", ["h2r", "scale"], ["h2s"], name="scale_act"),
        n("Add", ["h2s", "ones"], ["h2o"], name="add_ones"),
        n("Sigmoid", ["h2o"], ["a2"], name="sigmoid2"),
        n("MatMul", ["a2", "W3"], ["h3"], name="mm3"),
        n("Add", ["h3", "bias"], ["h3b"], name="add_bias"),
        n("Mul", ["h3b", "row"], ["h3r"], name="mul_row"),
        n("MatMul", ["h3r", "W4"], ["h4"], name="mm4"),
        n("Relu", ["h4"], ["a4"], name="relu4"),
        n("MatMul", ["a4", "W_shared_again"], ["y"], name="mm_shared_last"),
    ]
    return _model("constant_chains", nodes,
                  [helper.make_tensor_value_info("x", F32, ["N", 8])],
                  [helper.make_tensor_value_info("y", F32, ["N", 8])], inits)


# -- (h) dynamic axes written as dim_value -1 ------------------------------------------------------------------

def paddle_dims(seed: int = 0) -> onnx.ModelProto:
    """`symbolic_batch` as PaddlePaddle's converter writes it: the dynamic batch axis of the input, the
    output and an intermediate's value_info as `dim_value: -1` (the output's as 0), not as a name."""
    m = symbolic_batch(seed)
    g = m.graph
    g.name = "paddle_dims"
    g.input[0].type.tensor_type.shape.dim[0].Clear()
    g.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    g.output[0].type.tensor_type.shape.dim[0].Clear()
    g.output[0].type.tensor_type.shape.dim[0].dim_value = 0
    g.value_info.append(helper.make_tensor_value_info("r0", F32, [-1, 8, 6, 6]))
    onnx.checker.check_model(m, full_check=True)
    return m


HELPER_MODELS = {
    "residual": residual,
    "two_in_two_out": two_in_two_out,
    "shared_weight": shared_weight,
    "branch": branch,
    "symbolic_batch": symbolic_batch,
    "transformer": transformer,
}


# -- random models for the planner -----------------------------------------------------------------------

def random_model(seed: int, n_nodes: int, dag: bool = True) -> onnx.ModelProto:
    """A random float32 model of `n_nodes` nodes on [1, d] tensors of varying width.

    A chain when `dag` is false; otherwise some nodes also read an earlier tensor (Concat or Add),
    so tensors cross several cuts, and some MatMuls reuse an earlier weight (shared parameters).
    """
    rng = np.random.default_rng(seed)
    d0 = int(rng.integers(2, 40))
    widths = {"x": d0}
    inits: list[onnx.TensorProto] = []
    square: dict[int, str] = {}  # a square weight per width, for reuse
    nodes = []
    cur = "x"
    made: list[str] = ["x"]
    for i in range(n_nodes):
        out = f"t{i}"
        d = widths[cur]
        r = rng.random()
        earlier = [t for t in made[:-1] if t != cur]
        if dag and earlier and r < 0.3:
            other = earlier[int(rng.integers(len(earlier)))]
            if widths[other] == d:
                nodes.append(helper.make_node("Add", [cur, other], [out], name=f"add{i}"))
                widths[out] = d
            else:
                nodes.append(helper.make_node("Concat", [cur, other], [out], name=f"concat{i}", axis=1))
                widths[out] = d + widths[other]
        elif r < 0.7 or widths[cur] > 64:
            d_out = d if rng.random() < 0.25 else int(rng.integers(2, 48))
            if d_out == d and d in square and dag and rng.random() < 0.6:
                w = square[d]
            else:
                w = f"W{i}"
                inits.append(_weight(rng, w, (d, d_out)))
                if d_out == d:
                    square[d] = w
            nodes.append(helper.make_node("MatMul", [cur, w], [out], name=f"mm{i}"))
            widths[out] = d_out
        else:
            op = ["Relu", "Tanh", "Sigmoid"][int(rng.integers(3))]
            nodes.append(helper.make_node(op, [cur], [out], name=f"{op.lower()}{i}"))
            widths[out] = d
        cur = out
        made.append(out)
    return _model(f"random{seed}", nodes,
                  [helper.make_tensor_value_info("x", F32, [1, d0])],
                  [helper.make_tensor_value_info(cur, F32, [1, widths[cur]])], inits)
