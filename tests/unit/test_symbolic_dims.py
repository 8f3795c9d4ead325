"""A non-positive `dim_value` is a symbolic dimension: PaddlePaddle writes a dynamic axis as -1 (or 0).
The model is planned from `--inputs` / `--input-shape` sizes, and the emitted sub-models keep the axis
dynamic, so they run at other sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepart.errors import InputShapeError, InputsError
from edgepart.inputs import check_feeds, random_inputs, save_npz
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.compiler import package, prepare
from edgepart.packager.check.verify import verify
from edgepart.plan import TensorSpec

from graphs import paddle_dims

pytestmark = pytest.mark.timeout(120)

ATOL = 1e-5


def cluster_yaml(path: Path, n_dev: int) -> Path:
    lines = ["devices:"] + [f"  - {{name: dev{i}, gflops: {1e-3 * (i + 1)}, memory_mb: 64}}" for i in range(n_dev)]
    lines += ["links:", "  default: {bandwidth_mbps: 1000, latency_ms: 0.2}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in vi.type.tensor_type.shape.dim]


def test_minus_one_is_planned_from_the_given_size():
    g = analyse(paddle_dims(), {"x": (1, 4, 6, 6)})
    assert g.inputs[0].shape == ("?", 4, 6, 6)
    assert g.outputs[0].shape[0] == "?" and g.outputs[0].shape[1] == 10
    assert all(not (isinstance(d, int) and d <= 0) for s in g.specs.values() for d in s.shape)


def test_minus_one_without_a_size_asks_for_one():
    with pytest.raises(InputShapeError, match=r"x \[\?x4x6x6\].*--input-shape"):
        analyse(paddle_dims())


def test_a_positive_size_still_has_to_match():
    with pytest.raises(InputShapeError, match="fixed size 4 on axis 1"):
        analyse(paddle_dims(), {"x": (1, 5, 6, 6)})


@pytest.mark.parametrize("n_dev", [2, 3])
def test_sub_models_keep_the_axis_dynamic_and_run_at_other_sizes(tmp_path, n_dev):
    path = tmp_path / "paddle.onnx"
    onnx.save(paddle_dims(), str(path))
    prep = prepare(path, cluster_yaml(tmp_path / "cluster.yaml", n_dev), "throughput", {"x": (1, 4, 6, 6)})
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist")
    for st in res.plan.steps:
        sub = onnx.load(str(tmp_path / "dist" / st.device / st.model_file))
        for vi in list(sub.graph.input) + list(sub.graph.output):
            assert all(not (isinstance(d, int) and d <= 0) for d in dims(vi)), (st.name, vi.name, dims(vi))
        for spec in st.inputs + st.outputs:
            if len(spec.shape) == 4:  # the activations: their batch axis stays symbolic
                assert not isinstance(spec.shape[0], int), spec
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 6, 6)).astype(np.float32)
        v = verify(tmp_path / "dist", path, {"x": x}, ATOL)
        assert v.ok and v.model_matches_plan, (batch, v.max_abs_diff)


def test_package_with_inputs_npz_through_the_cli(tmp_path):
    """The reported failure: `edgepart package --inputs x.npz` on a model with a -1 batch axis."""
    from typer.testing import CliRunner

    from edgepart.cli import app

    path = tmp_path / "paddle.onnx"
    onnx.save(paddle_dims(), str(path))
    save_npz(tmp_path / "x.npz", {"x": np.ones((1, 4, 6, 6), np.float32)})
    save_npz(tmp_path / "x3.npz", {"x": np.random.default_rng(3).standard_normal((3, 4, 6, 6)).astype(np.float32)})
    runner = CliRunner()
    r = runner.invoke(app, ["package", str(path), "-c", str(cluster_yaml(tmp_path / "cluster.yaml", 2)),
                            "-o", str(tmp_path / "dist"), "--inputs", str(tmp_path / "x.npz"), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(tmp_path / "dist"), "-m", str(path), "--inputs", str(tmp_path / "x3.npz"),
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"]


def test_inputs_read_non_positive_sizes_as_symbolic():
    spec = TensorSpec("x", "float32", (-1, 4, 0))
    check_feeds([spec], {"x": np.zeros((3, 4, 2), np.float32)})
    with pytest.raises(InputsError, match="has shape"):
        check_feeds([spec], {"x": np.zeros((3, 5, 2), np.float32)})
    assert random_inputs([spec])["x"].shape == (1, 4, 1)
