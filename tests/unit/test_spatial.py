"""The spatial split's row arithmetic (packager/strategies/spatial/halo.py) and its strips, exact
against one onnxruntime session (docs/spatial.md)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepart.errors import PlanningError

import graphs

F32 = TensorProto.FLOAT


def _cluster(n: int, speeds=(20, 10, 30, 15)):
    from edgepart.packager.cluster import cluster_from_dict

    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": speeds[i]} for i in range(n)]})


def _w(rng, name, shape):
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)


def tile_net(h: int = 37, w: int = 29, seed: int = 0, resize: str = "nearest") -> onnx.ModelProto:
    """A CNN with every op the row arithmetic knows, at odd sizes: stride 2, dilation 2, pools with and
    without padding, a Pad, an upsampling Resize, a residual Add, a channel Concat, a broadcast Mul,
    then a global pool and a classifier that end the fused prefix."""
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, "W0", (8, 3, 3, 3)), _w(rng, "B0", (8,)), _w(rng, "W1", (8, 8, 3, 3)), _w(rng, "W2", (8, 1, 3, 3)),
        _w(rng, "W3", (8, 8, 1, 1)), _w(rng, "W4", (8, 16, 3, 3)), _w(rng, "Wfc", (8, 5)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_s"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bn_b"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bn_m"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_v"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 8, 1, 1)).astype(np.float32), "scale"),
        numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "up"),
        numpy_helper.from_array(np.array([-1.0], dtype=np.float32), "lo"),
        numpy_helper.from_array(np.array([4.0], dtype=np.float32), "hi"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "W0", "B0"], ["c0"], name="conv_s2", pads=[1, 1, 1, 1], strides=[2, 2]),
        n("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        n("LeakyRelu", ["bn"], ["r0"], name="leaky", alpha=0.1),
        n("Conv", ["r0", "W1"], ["c1"], name="conv_dil2", pads=[2, 2, 2, 2], dilations=[2, 2]),
        n("Clip", ["c1", "lo", "hi"], ["r1"], name="clip"),
        n("Add", ["r1", "r0"], ["a0"], name="residual"),
        n("MaxPool", ["a0"], ["p0"], name="maxpool_pad", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Pad", ["p0", "pads"], ["pd"], name="pad", mode="constant"),
        n("Conv", ["pd", "W2"], ["c2"], name="depthwise", group=8),
        n("Sigmoid", ["c2"], ["g"], name="sigmoid"),
        n("Mul", ["c2", "g"], ["sw"], name="swish"),
        n("Mul", ["sw", "scale"], ["ms"], name="broadcast_mul"),
        n("Conv", ["ms", "W3"], ["c3"], name="pointwise"),
        n("Relu", ["c3"], ["r3"], name="relu"),
        n("AveragePool", ["r3"], ["ap"], name="avgpool_nopad", kernel_shape=[2, 2], strides=[1, 1]),
        n("Resize", ["ap", "", "up"], ["upx"], name="resize", mode=resize,
          **({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} if resize == "nearest" else {})),
        n("Concat", ["upx", "upx"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "W4"], ["c4"], name="conv_s2_last", pads=[1, 1, 1, 1], strides=[2, 2]),
        n("GlobalAveragePool", ["c4"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
        n("MatMul", ["flat", "Wfc"], ["y"], name="fc"),
    ]
    g = helper.make_graph(nodes, f"tile_net_{resize}", [helper.make_tensor_value_info("x", F32, [1, 3, h, w])],
                          [helper.make_tensor_value_info("y", F32, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {k: feeds[k] for k in names})))


def _plan(model, n, tile_until=None, shapes=None):
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.spatial.planner import plan_spatial

    g = analyse(model, shapes)
    return g, plan_spatial(model, g, _cluster(n), tile_until)


# -- the arithmetic, one op at a time ----------------------------------------------------------------

def _rule(**kw):
    from edgepart.packager.strategies.spatial.halo import Rule

    return Rule("n", "Conv", "window", **kw)


def test_conv_3x3_pad_1_needs_one_row_each_side_and_pads_only_at_the_image_border():
    r = _rule(h_in=10, h_out=10, kernel=3, top=1)
    assert r.need((0, 4)) == ((0, 5), 1, 0)  # first strip: the top pad stays, its bottom neighbour row is read
    assert r.need((4, 7)) == ((3, 8), 0, 0)  # interior: real rows on both sides, no zero padding
    assert r.need((7, 10)) == ((6, 10), 0, 1)  # last strip: the bottom pad stays


def test_stride_2_and_dilation_2():
    s2 = _rule(h_in=9, h_out=5, kernel=3, stride=2, top=1)  # 9 rows, pad 1: out row o reads 2o-1 .. 2o+1
    assert s2.need((0, 2)) == ((0, 4), 1, 0)
    assert s2.need((2, 5)) == ((3, 9), 0, 1)
    d2 = _rule(h_in=12, h_out=12, kernel=3, dilation=2, top=2)  # rows o-2, o, o+2
    assert d2.need((0, 5)) == ((0, 7), 2, 0)
    assert d2.need((5, 8)) == ((3, 10), 0, 0)
    assert d2.need((8, 12)) == ((6, 12), 0, 2)


def test_pooling_with_and_without_padding():
    from edgepart.packager.strategies.spatial.halo import Rule

    pad = Rule("p", "MaxPool", "window", 10, 5, kernel=3, stride=2, top=1)
    assert pad.need((0, 2)) == ((0, 4), 1, 0)
    assert pad.need((2, 5)) == ((3, 10), 0, 0)  # floor mode: its bottom padding row is never read
    nopad = Rule("p", "AveragePool", "window", 10, 9, kernel=2)
    assert nopad.need((0, 4)) == ((0, 5), 0, 0)
    assert nopad.need((4, 9)) == ((4, 10), 0, 0)


def test_resize_nearest_and_linear_rows():
    from edgepart.packager.strategies.spatial.halo import Rule

    near = Rule("r", "Resize", "resize", 5, 10, scale=2)
    assert near.need((3, 7)) == ((1, 4), 0, 0) and near.made_from((1, 4)) == (2, 8)
    lin = Rule("r", "Resize", "resize", 5, 10, scale=2, linear=True)
    (lo, hi), _, _ = lin.need((3, 7))
    assert lo <= 1 and hi >= 4 and lo * 2 <= 3 and hi * 2 >= 7


def test_split_rows_by_speed():
    from edgepart.packager.strategies.spatial.planner import split_rows

    assert split_rows(10, [1, 1]) == [(0, 5), (5, 10)]
    assert split_rows(12, [20, 10, 30]) == [(0, 4), (4, 6), (6, 12)]
    assert split_rows(13, [20, 10, 30]) == [(0, 4), (4, 6), (6, 13)]
    assert split_rows(3, [1, 100, 1]) == [(0, 1), (1, 2), (2, 3)]  # at least one row each
    with pytest.raises(PlanningError, match="4 strips of an output with 3 rows"):
        split_rows(3, [1, 1, 1, 1])


# -- the strips, exact against the whole model ---------------------------------------------------------

def _chain(model, g, sp, feeds) -> dict:
    """Run the tiles, every strip and the gather in one process, as the agents would."""
    from edgepart.packager.strategies.spatial.compiler import step_models

    t = dict(feeds)
    for st in step_models(model, g, sp):
        t.update(_run(st.model, t))
    return t


@pytest.mark.parametrize("resize", ["nearest", "linear"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_strips_concatenated_equal_the_whole_prefix(n, resize):
    from edgepart.packager.strategies.spatial.compiler import strip_model

    model = tile_net(resize=resize)
    x = np.random.default_rng(n).standard_normal((1, 3, 37, 29)).astype(np.float32)
    for until in ("leaky", "residual", "maxpool_pad", "resize", "conv_s2_last"):
        g, sp = _plan(model, n, until)
        from edgepart.packager.model.probe import run as probe_run

        want = probe_run(model, [sp.prefix.until], {"x": x})[0]
        parts = []
        for k, s in enumerate(sp.strips):
            m, _, _ = strip_model(model, g, sp, k)
            xs = x[:, :, s.input_rows[0]:s.input_rows[1]]
            parts.append(_run(m, {m.graph.input[0].name: xs})[m.graph.output[0].name])
        got = np.concatenate(parts, axis=2)
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-5, (until, n)
        t = _chain(model, g, sp, {"x": x})
        assert float(np.abs(t["y"] - _run(model, {"x": x})["y"]).max()) <= 1e-5


@pytest.mark.parametrize("n", [2, 3, 4])
def test_default_prefix_is_exact_end_to_end(n):
    model = tile_net(h=41, w=23, seed=1)
    g, sp = _plan(model, n)
    assert len(sp.candidates) >= 5 and sp.prefix.until in {t for t, _ in sp.candidates}
    x = np.random.default_rng(7).standard_normal((1, 3, 41, 23)).astype(np.float32)
    assert float(np.abs(_chain(model, g, sp, {"x": x})["y"] - _run(model, {"x": x})["y"]).max()) <= 1e-5


def test_an_interior_strip_is_padded_by_its_neighbours_not_by_zeros():
    g, sp = _plan(tile_net(), 3, "conv_s2")
    mid = sp.strips[1]
    conv = next(nr for nr in mid.nodes if g.nodes[nr.node].name == "conv_s2")
    assert (conv.pad_top, conv.pad_bottom) == (0, 0) and mid.input_rows[0] > 0
    assert next(nr for nr in sp.strips[0].nodes if g.nodes[nr.node].name == "conv_s2").pad_top == 1


def test_memory_per_device_below_the_unsplit_model():
    from edgepart.packager.strategies.spatial.strategy import SpatialPlanned

    model = tile_net(h=64, w=64)
    g, sp = _plan(model, 4, "conv_s2_last")
    planned = SpatialPlanned(model, g, _cluster(4), sp)
    mem = {d: tot for d, _, _, tot in planned.memory()}
    print("\nmemory per device (weights + peak activations) vs unsplit "
          f"{sp.whole_memory_bytes:,} B: " + ", ".join(f"{d} {b:,} B" for d, b in mem.items()))
    assert all(b < sp.whole_memory_bytes for d, b in mem.items() if d != sp.gather)
    assert planned.to_dict()["memory"][0]["total_bytes"] == mem["dev0"]


# -- clear errors ----------------------------------------------------------------------------------

def test_a_model_whose_first_layer_is_not_spatial():
    with pytest.raises(PlanningError, match="4-D image input"):
        _plan(graphs.transformer(), 2)


def test_an_unknown_op_in_the_prefix_is_named():
    m = tile_net()
    lrn = helper.make_node("LRN", ["r0"], ["lrn"], name="the_lrn", size=3)
    nodes = list(m.graph.node)
    i = next(k for k, nd in enumerate(nodes) if nd.name == "conv_dil2")
    nodes[i].input[0] = "lrn"
    nodes.insert(i, lrn)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    with pytest.raises(PlanningError, match=r"'the_lrn' \(LRN\)"):
        _plan(m, 2, "clip")


def test_more_strips_than_output_rows():
    with pytest.raises(PlanningError, match="4 strips of an output with 3 rows"):
        _plan(tile_net(h=9, w=9), 4, "conv_s2_last")


def test_a_cut_crossed_by_a_branch_is_refused():
    with pytest.raises(PlanningError, match="skip across the cut"):
        _plan(tile_net(), 2, "conv_dil2")


def test_registered_for_the_cli():
    from edgepart.packager.strategies import get, names

    assert "spatial" in names() and "tile_until" in get("spatial").options


def _small(nodes, inits, h=16, w=12, out_shape=None):
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", F32, [1, 2, h, w])],
                          [helper.make_tensor_value_info(nodes[-1].output[0], F32, out_shape or [1, None, None, None])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("auto", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_convs_are_exact(auto):
    rng = np.random.default_rng(3)
    m = _small([helper.make_node("Conv", ["x", "W"], ["c"], name="c", auto_pad=auto, strides=[2, 2]),
                helper.make_node("Conv", ["c", "W2"], ["y"], name="c2", auto_pad=auto)],
               [_w(rng, "W", (4, 2, 4, 4)), _w(rng, "W2", (4, 4, 3, 3))], h=15, w=11)
    x = rng.standard_normal((1, 2, 15, 11)).astype(np.float32)
    for n in (2, 3, 4):
        g, sp = _plan(m, n, "c2")
        assert float(np.abs(_chain(m, g, sp, {"x": x})["y"] - _run(m, {"x": x})["y"]).max()) <= 1e-5


def test_a_pool_rounding_up_is_refused_by_name():
    m = _small([helper.make_node("MaxPool", ["x"], ["y"], name="ceil_pool", kernel_shape=[2, 2], strides=[2, 2],
                                 ceil_mode=1)], [], h=15, w=11)
    with pytest.raises(PlanningError, match=r"'ceil_pool' \(MaxPool\) rounds its output size up"):
        _plan(m, 2, "ceil_pool")


def test_a_pool_rounding_up_in_width_only_is_refused_too():
    # 16 rows divide evenly, 11 columns do not: the strips' pools lose ceil_mode, so W would shrink
    m = _small([helper.make_node("MaxPool", ["x"], ["y"], name="ceil_w", kernel_shape=[2, 2], strides=[2, 2],
                                 ceil_mode=1)], [], h=16, w=11)
    with pytest.raises(PlanningError, match=r"'ceil_w' \(MaxPool\) rounds its output size up"):
        _plan(m, 2, "ceil_w")


@pytest.mark.parametrize("n", [2, 3])
def test_pads_sharing_one_initializer_and_numeric_tensor_names_are_exact(n):
    """Two Pads reading one pads constant (optimisers merge equal constants) get a pads initializer
    each per strip; tensors named "1", "2" (older PyTorch exports) do not collide with the crops."""
    rng = np.random.default_rng(5)
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads")
    m = _small([helper.make_node("Pad", ["x", "pads"], ["1"], name="pad_a", mode="constant"),
                helper.make_node("Conv", ["1", "W"], ["2"], name="conv_a"),
                helper.make_node("Pad", ["2", "pads"], ["3"], name="pad_b", mode="constant"),
                helper.make_node("Conv", ["3", "W2"], ["y"], name="conv_b")],
               [pads, _w(rng, "W", (4, 2, 3, 3)), _w(rng, "W2", (4, 4, 3, 3))], h=17, w=9)
    x = rng.standard_normal((1, 2, 17, 9)).astype(np.float32)
    g, sp = _plan(m, n, "conv_b")
    assert float(np.abs(_chain(m, g, sp, {"x": x})["y"] - _run(m, {"x": x})["y"]).max()) <= 1e-5


def test_a_global_first_layer_is_not_spatial():
    m = _small([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], [], out_shape=[1, 2, 1, 1])
    with pytest.raises(PlanningError, match=r"first layer 'gap' \(GlobalAveragePool\) is not spatial"):
        _plan(m, 2)


def test_plan_prints_strips_halos_and_memory(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from edgepart.cli import app

    path = tmp_path / "tile_net.onnx"
    onnx.save(tile_net(h=48, w=32), str(path))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"devices": [{"name": f"dev{i}", "gflops": g, "memory_mb": 64} for i, g in enumerate((20, 10, 30))]}))
    r = CliRunner().invoke(app, ["plan", str(path), "-c", str(tmp_path / "c.yaml"), "--strategy", "spatial"],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "fused prefix" in r.output and "memory vs unsplit" in r.output and "(gathers)" in r.output
    help_ = CliRunner().invoke(app, ["package", "--help"], env={"COLUMNS": "200"}).output
    assert "spatial" in help_


def test_a_device_without_the_memory_for_its_part_is_named():
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.spatial.planner import plan_spatial

    m = tile_net(h=64, w=64)
    cl = cluster_from_dict({"devices": [{"name": "big", "gflops": 10, "memory_mb": 64},
                                        {"name": "tiny", "gflops": 20, "memory_mb": 0.01}]})
    with pytest.raises(PlanningError, match="tiny needs .* MiB for its part"):
        plan_spatial(m, analyse(m), cl, "conv_s2_last")


@pytest.mark.parametrize("n", [2, 3])
def test_the_rest_as_a_pipeline_is_exact(n, tmp_path):
    """rest="pipeline": the strips joined, then the rest of the model split over every device."""
    import edgepart.packager as p
    import yaml

    from edgepart.local import LocalCluster

    path = tmp_path / "tile_net.onnx"
    onnx.save(tile_net(h=48, w=32), str(path))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"devices": [{"name": f"dev{i}", "gflops": g, "memory_mb": 64} for i, g in enumerate((20, 10, 30)[:n])]}))
    res = p.package(path, tmp_path / "c.yaml", out=tmp_path / "dist", strategy="spatial", rest="pipeline",
                    tile_until="maxpool_pad")
    stages = res.planned.rest.pipeline.stages
    assert len(stages) == n and {s.name for s in res.plan.steps} >= {f"rest{i}" for i in range(n)}
    assert not any(s.name == "gather" for s in res.plan.steps)
    x = np.random.default_rng(5).standard_normal((1, 3, 48, 32)).astype(np.float32)
    got = LocalCluster.from_dist(tmp_path / "dist").run({"x": x})
    assert float(np.abs(got["y"] - _run(tile_net(h=48, w=32), {"x": x})["y"]).max()) <= 1e-5
    assert res.planned.to_dict()["rest_pipeline"][0]["device"] == stages[0].device


def test_cli_flags_tile_until_and_rest(tmp_path):
    """`--tile-until` and `--rest` reach the strategy from `plan` (and are refused for another one)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from edgepart.cli import app

    path = tmp_path / "tile_net.onnx"
    onnx.save(tile_net(h=48, w=32), str(path))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"devices": [{"name": f"dev{i}", "gflops": g} for i, g in enumerate((20, 10, 30))]}))
    base = ["plan", str(path), "-c", str(tmp_path / "c.yaml")]
    r = CliRunner().invoke(app, [*base, "--strategy", "spatial", "--tile-until", "leaky", "--rest", "pipeline", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fused"]["until"] in ("leaky", "r0"), d["fused"]
    assert d["rest"]["as"] == "pipeline" and d["rest"]["stages"], d["rest"]
    r = CliRunner().invoke(app, [*base, "--rest", "pipeline"])
    assert r.exit_code != 0 and "--rest applies to --strategy spatial only" in r.output, r.output
    r = CliRunner().invoke(app, [*base, "--strategy", "spatial", "--tile-until", "no_such_node"])
    assert r.exit_code != 0 and "no_such_node" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.models
def test_the_rest_as_a_pipeline_needs_no_device_to_hold_all_of_it():
    """With rest="pipeline", the gathering device need not hold the whole rest (its stage is what it
    holds); with rest="gather" the same cluster is refused by name. Every device's strip plus its
    stage fits its memory_mb."""
    import edgepart.packager as p
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.testing import zoo

    m = zoo.efficientnet_lite0()
    cl = cluster_from_dict({"devices": [{"name": n, "gflops": g, "memory_mb": 21} for n, g in (("a", 20), ("b", 10), ("c", 30))]})
    shapes = {"input": (1, 3, 224, 224)}
    with pytest.raises(PlanningError, match=r"c needs .* MiB for its part"):
        p.plan(m, cl, strategy="spatial", objective="throughput", input_shapes=shapes, rest="gather")
    planned = p.plan(m, cl, strategy="spatial", objective="throughput", input_shapes=shapes, rest="pipeline")
    assert all(total <= 21 * 2**20 for _, _, _, total in planned.memory()), planned.memory()
