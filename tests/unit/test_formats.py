"""The packager's TFLite pass around the converter (packager/formats.py, docs/tflite.md "In the
packager"), without the converter's environment: the activations each step is checked on (only a
real batch axis is cut into samples), LiteRT asked for before any conversion, and dist/ rewritten in
an order that never leaves a bundle with neither its ONNX step nor its TFLite one. Real packaged
plans and onnxruntime sessions throughout; the converted file is a stand-in only where what is
tested is where files go (its contents are never read there)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgepart.packager as packager
from edgepart.bundle import load_dist, sha256_file
from edgepart.errors import ConversionError
from edgepart.packager.formats import batched, rewrite, samples_in, step_activations
from edgepart.plan import TensorIO
from edgepart.runtime import make_session


def _three_inputs_model() -> onnx.ModelProto:
    """a [n, 4] (a batch axis), b [2, 4] (a fixed batch of 2), c [3] (no batch axis):
    y = tanh(relu(a) + sum(b, axis 0)) [n, 4], yc = -c [3]."""
    nodes = [helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("ReduceSum", ["b", "ax"], ["sb"], keepdims=1),
             helper.make_node("Add", ["ra", "sb"], ["h"]),
             helper.make_node("Tanh", ["h"], ["y"]),
             helper.make_node("Neg", ["c"], ["yc"])]
    g = helper.make_graph(nodes, "three", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4]),
                                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                           helper.make_tensor_value_info("yc", TensorProto.FLOAT, [3])],
                          [onnx.numpy_helper.from_array(np.array([0], np.int64), "ax")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def packaged(tmp_path):
    """The model packaged as a 2-device pipeline, with 5 example samples of `a`."""
    model = tmp_path / "three.onnx"
    onnx.save(_three_inputs_model(), str(model))
    (tmp_path / "cluster.yaml").write_text(textwrap.dedent("""\
        devices:
          - {name: a, speed: 1}
          - {name: b, speed: 1}
        links:
          default: {bandwidth_mbps: 1000, latency_ms: 0.01}
        """))
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((5, 4)).astype(np.float32), "b": rng.standard_normal((2, 4)).astype(np.float32),
             "c": rng.standard_normal(3).astype(np.float32)}
    res = packager.package(model, tmp_path / "cluster.yaml", out=tmp_path / "dist", strategy="pipeline",
                           objective="throughput", inputs=feeds)
    assert len(res.plan.steps) >= 1
    return model, res, feeds


def test_only_a_real_batch_axis_is_cut_into_samples(packaged):
    model, res, feeds = packaged
    specs = {t.name: t for t in res.plan.inputs}
    assert [batched(specs[n]) for n in "abc"] == [True, False, False]
    assert samples_in(res.plan, feeds) == 5
    whole = make_session(str(model))
    for i in (0, 2, 4):
        acts = step_activations(res.plan, res.bundle_dirs, feeds, sample=i)
        assert acts["a"].shape == (1, 4) and np.array_equal(acts["a"], feeds["a"][i:i + 1])
        assert np.array_equal(acts["b"], feeds["b"]) and np.array_equal(acts["c"], feeds["c"])  # whole, every sample
        want = whole.run(["y", "yc"], {"a": feeds["a"][i:i + 1], "b": feeds["b"], "c": feeds["c"]})
        assert np.allclose(acts["y"], want[0], atol=1e-6) and np.allclose(acts["yc"], want[1])


def test_litert_is_asked_for_before_any_conversion(packaged, tmp_path):
    """A packager's Python where neither LiteRT runtime imports (both blocked, as without the extra):
    --format tflite stops at once, before planning, says what to install and builds no converter
    environment."""
    model, res, feeds = packaged
    cache = tmp_path / "cache"
    cache.mkdir()
    code = textwrap.dedent(f"""\
        import sys; sys.modules['ai_edge_litert'] = sys.modules['tflite_runtime'] = None
        import edgepart.packager as packager
        from edgepart.errors import ConversionError
        try:
            packager.package({str(model)!r}, {str(tmp_path / 'cluster.yaml')!r}, out={str(tmp_path / 'dist2')!r},
                             strategy="pipeline", format="tflite", input_shapes={{"a": (1, 4)}})
        except ConversionError as e:
            print(e)
        """)
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "EDGEPART_CACHE": str(cache)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'pip install "edgepart[litert]"' in r.stdout and "LiteRT" in r.stdout, r.stdout
    assert not any(cache.iterdir()), "a converter environment was started"
    assert not (tmp_path / "dist2").exists()  # asked for before planning, too


def _as_tflite(res, staging: Path):
    """The plan with every step made a TFLite step, and the moves rewrite() takes: a staged file per
    step (a stand-in: rewrite only places files), the step, the target in its bundle."""
    staging.mkdir()
    steps, moves = [], []
    for st in res.plan.steps:
        tfl = staging / f"{st.name}.tflite"
        tfl.write_bytes(b"TFL3" + st.name.encode() * 64)
        io = [TensorIO(t.name, f"x{i}") for i, t in enumerate(st.inputs)] + \
             [TensorIO(t.name, f"y{j}") for j, t in enumerate(st.outputs)]
        steps.append(dataclasses.replace(st, model_file=tfl.name, sha256=sha256_file(tfl), data_files=(),
                                         runtime="tflite", io=tuple(io)))
        moves.append((st, tfl, res.bundle_dirs[st.device] / tfl.name))
    return dataclasses.replace(res.plan, steps=tuple(steps)), moves


def test_a_failed_rewrite_leaves_every_bundle_as_it_was(packaged, tmp_path):
    _, res, _ = packaged
    new, moves = _as_tflite(res, tmp_path / "staged")
    assert len(moves) >= 2
    moves[-1][1].unlink()  # the last file cannot be copied: gone from the staging folder
    with pytest.raises(ConversionError, match="left as they were"):
        rewrite(res.plan, new, res.bundle_dirs, moves)
    dist = load_dist(res.bundle_dirs[res.plan.steps[0].device].parent)  # every file's sha256 checked
    assert {b.plan.plan_id for b in dist.values()} == {res.plan.plan_id}
    assert all(s.runtime == "onnx" for b in dist.values() for s in b.steps)
    assert not [p for d in res.bundle_dirs.values() for p in d.glob("*.tflite")]


def test_a_rewrite_places_the_new_files_then_the_manifests_then_removes_the_old(packaged, tmp_path):
    _, res, _ = packaged
    new, moves = _as_tflite(res, tmp_path / "staged")
    rewrite(res.plan, new, res.bundle_dirs, moves)
    dist = load_dist(res.bundle_dirs[res.plan.steps[0].device].parent)
    assert {b.plan.plan_id for b in dist.values()} == {new.plan_id} != {res.plan.plan_id}
    for st, _, target in moves:
        assert target.is_file() and not (res.bundle_dirs[st.device] / st.model_file).exists()
