"""CLI tests: every bad input gives a clear one-paragraph error, a non-zero exit code, no traceback;
the JSON outputs parse; `--help` is complete."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The model builders live with the unit tests (tests/unit/graphs.py); helpers in cli_helpers.py.
sys.path[:0] = [str(HERE), str(HERE.parent / "unit")]

import onnx  # noqa: E402

import graphs  # noqa: E402
from cli_helpers import CLUSTER3, invoke  # noqa: E402


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> Path:
    """A folder with models (good and bad) and cluster files."""
    d = tmp_path_factory.mktemp("cli")
    onnx.save(graphs.residual(), str(d / "residual.onnx"))
    onnx.save(graphs.symbolic_batch(), str(d / "symbolic.onnx"))
    onnx.save(graphs.random_model(3, 3, dag=False), str(d / "three_nodes.onnx"))
    onnx.save(graphs.transformer(dim=256, hidden=1024), str(d / "big.onnx"))  # ~3 MB of weights
    (d / "cluster3.yaml").write_text(CLUSTER3)
    return d


@pytest.fixture(scope="session")
def packaged(files, tmp_path_factory) -> Path:
    """dist/ of the residual model on three devices, written by `edgepart package`."""
    dist = tmp_path_factory.mktemp("packaged") / "dist"
    res = invoke("package", files / "residual.onnx", "-c", files / "cluster3.yaml", "-o", dist,
                 "--objective", "throughput")
    assert res.exit_code == 0, res.output
    return dist
