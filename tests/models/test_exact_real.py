"""Real pretrained models, split for 2, 3 and 4 unequal devices, compute what the whole model computes
(max abs diff <= 1e-5 on real inputs), also at input sizes other than the ones planned for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.models

zoo = pytest.importorskip("edgepart.testing.zoo")
from edgepart.inputs import save_npz  # noqa: E402
from edgepart.packager.strategies.pipeline.compiler import package, prepare  # noqa: E402
from edgepart.packager.check.verify import verify  # noqa: E402

ATOL = 1e-5
# Unequal devices: speeds 1x to 8x apart, memory from 128 MB to 1 GB, one slow pair link.
DEVICES = [
    {"name": "jetson", "gflops": 40, "memory_mb": 512},
    {"name": "pi", "gflops": 5, "memory_mb": 256},
    {"name": "laptop", "gflops": 25, "memory_mb": 1024},
    {"name": "phone", "gflops": 15, "memory_mb": 128},
]


def write_cluster(tmp_path: Path, n: int) -> Path:
    names = [d["name"] for d in DEVICES[:n]]
    doc = {
        "devices": DEVICES[:n],
        "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.5},
                  "pairs": [{"between": names[:2], "bandwidth_mbps": 100, "latency_ms": 2}]},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def shapes(feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in feeds.items()}


def package_and_check(model: Path, tmp_path: Path, n: int, plan_feeds: dict, other_feeds: list[dict]):
    """Plan at `plan_feeds`' shapes (throughput, so every device gets real work), then verify on all feeds."""
    prep = prepare(model, write_cluster(tmp_path, n), "throughput", shapes(plan_feeds))
    assert len(prep.pipeline.stages) == n
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist", model_name=model.stem)
    assert sorted(res.bundle_dirs) == sorted(d["name"] for d in DEVICES[:n])
    for feeds in [plan_feeds, *other_feeds]:
        v = verify(tmp_path / "dist", model, feeds, ATOL)
        assert v.model_matches_plan
        assert v.ok, f"{n} devices, cuts {prep.pipeline.cuts}, inputs {shapes(feeds)}: {v.max_abs_diff}"
    return res


# -- EfficientNet-Lite0 (dynamic batch) ------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_efficientnet_lite0_exact(efficientnet_lite0_path, tmp_path, n):
    package_and_check(efficientnet_lite0_path, tmp_path, n, zoo.imagenet_inputs(2), [zoo.imagenet_inputs(5)])


def test_efficientnet_lite0_exact_through_cli(efficientnet_lite0_path, tmp_path):
    from typer.testing import CliRunner

    from edgepart.cli import app

    model, dist = efficientnet_lite0_path, tmp_path / "dist"
    cluster = write_cluster(tmp_path, 3)
    save_npz(tmp_path / "plan.npz", zoo.imagenet_inputs(3))
    save_npz(tmp_path / "other.npz", zoo.imagenet_inputs(1))
    runner = CliRunner()
    r = runner.invoke(app, ["package", str(model), "-c", str(cluster), "-o", str(dist), "--objective", "throughput",
                            "--inputs", str(tmp_path / "plan.npz"), "--json"])
    assert r.exit_code == 0, r.output
    planned = json.loads(r.stdout)
    assert len(planned["stages"]) == 3 and sorted(planned["bundles"]) == ["jetson", "laptop", "pi"]
    for npz in ("plan.npz", "other.npz"):
        r = runner.invoke(app, ["verify", str(dist), "-m", str(model), "--inputs", str(tmp_path / npz), "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["ok"] and out["plan_id"] == planned["plan_id"]
        assert out["outputs"]["logits"]["max_abs_diff"] <= ATOL



def test_efficientnet_lite0_on_camera_frames_is_the_float_model_and_splits_exactly(efficientnet_lite0_path, tmp_path):
    """The demo's model (`edgepart demo`): uint8 frames, normalised inside, give the float model's
    logits on the same crops (to float rounding of the folded normalisation), and split exactly."""
    import onnxruntime as ort

    frames_model = zoo.efficientnet_lite0_frames()
    frames, floats = zoo.imagenet_frames(4), zoo.imagenet_inputs(4)
    assert frames["image"].dtype == np.uint8 and frames["image"].nbytes * 4 == floats["input"].nbytes
    run = lambda m, feeds: ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    a, b = run(efficientnet_lite0_path, floats), run(frames_model, frames)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert (a.argmax(1) == b.argmax(1)).all()
    package_and_check(frames_model, tmp_path, 2, zoo.imagenet_frames(1), [zoo.imagenet_frames(3)])

# -- MiniLM (dynamic batch and sequence) -----------------------------------------------------------

def test_sentence_inputs_differ_in_batch_and_sequence():
    a, b = _minilm_feeds()
    assert a["input_ids"].shape[0] != b["input_ids"].shape[0]
    assert a["input_ids"].shape[1] != b["input_ids"].shape[1]
    assert a["attention_mask"].min() == 0 and b["attention_mask"].min() == 0  # real padding in both


def _minilm_feeds() -> tuple[dict, dict]:
    s = zoo.english_sentences(40)
    return zoo.sentence_inputs(s[:4]), zoo.sentence_inputs(s[30:40] + ["It works."])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_minilm_exact_at_other_batch_and_sequence(minilm_path, tmp_path, n):
    plan_feeds, other = _minilm_feeds()
    res = package_and_check(minilm_path, tmp_path, n, plan_feeds, [other])
    # every activation crossing a cut keeps a symbolic batch axis, not the planned batch of 4
    # (int64 shape vectors such as [4] cross too; their one axis is the rank, rightly fixed)
    crossing = [t for st in res.plan.steps[1:] for t in st.inputs if t.dtype == "float32" and len(t.shape) >= 2]
    assert crossing and all(not isinstance(t.shape[0], int) for t in crossing), crossing


# -- PP-OCRv4 text detector (dynamic height and width) ---------------------------------------------

@pytest.mark.parametrize("n", [3, 4])
def test_ppocr_det_exact(ppocr_det_path, tmp_path, n):
    package_and_check(ppocr_det_path, tmp_path, n, zoo.ocr_inputs((640, 640)), [zoo.ocr_inputs((480, 320))])


def test_ppocr_det_exact_through_the_installed_command(ppocr_det_path, tmp_path):
    exe = Path(sys.executable).parent / "edgepart"
    if not exe.is_file():
        pytest.skip("the edgepart console script is not installed in this environment")
    model, dist = ppocr_det_path, tmp_path / "dist"
    save_npz(tmp_path / "plan.npz", zoo.ocr_inputs((640, 640)))
    save_npz(tmp_path / "other.npz", zoo.ocr_inputs((320, 544)))
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([str(exe), "package", str(model), "-c", str(write_cluster(tmp_path, 2)), "-o", str(dist),
                        "--objective", "throughput", "--inputs", str(tmp_path / "plan.npz")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    for npz in ("plan.npz", "other.npz"):
        r = subprocess.run([str(exe), "verify", str(dist), "-m", str(model), "--inputs", str(tmp_path / npz), "--json"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["ok"] and out["outputs"]["sigmoid_0.tmp_0"]["max_abs_diff"] <= ATOL
