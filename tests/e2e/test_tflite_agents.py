"""One plan, two runtimes: a device running TFLite steps (LiteRT) beside a device running ONNX steps
(onnxruntime), each an `edgepart run` process, answer as the unsplit model does (docs/tflite.md).

The TFLite device is the pipeline's first stage, so what it sends is a 4-D activation that the ONNX
device reads in the plan's NCHW layout: an NHWC tensor leaking onto the wire would have the wrong
shape (refused by the receiving agent) or, where the sides happen to be equal, the wrong values.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from e2e_helpers import RUN, reference

pytestmark = [pytest.mark.timeout(1800), pytest.mark.models]  # the first conversion builds the converter's env

PHOTOS = 4


def _cluster(path, runtimes: dict[str, str]):
    doc = {"devices": [{"name": n, "gflops": 10, "memory_mb": 1024, "runtime": rt} for n, rt in runtimes.items()],
           "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_efficientnet_tflite_stage_then_onnx_stage_through_agents(efficientnet_lite0_path, tmp_path, agents, sessions):
    import edgepart.packager as p
    from edgepart.testing import zoo

    photos = zoo.imagenet_inputs(PHOTOS)["input"]
    # both devices ask for TFLite; the first stage converts, the last one holds the classifier's
    # dynamic reshape (Shape, Concat), which onnx2tf does not take: auto keeps it ONNX and says why
    res = p.package(efficientnet_lite0_path, _cluster(tmp_path / "c.yaml", {"dev0": "tflite", "dev1": "tflite"}),
                    out=tmp_path / "dist", format="auto", model_name=f"tflite-{RUN}", inputs={"input": photos[:1]},
                    objective="throughput", input_shapes={"input": (1, 3, 224, 224)})  # balanced: a mid-network cut
    plan = res.plan
    tfl = plan.hints.entry  # the first stage's device
    (other,) = set(plan.device_names()) - {tfl}
    assert plan.to_dict()["schema_version"] == 2
    assert {s.runtime for s in plan.steps_of(tfl)} == {"tflite"}, res.conversions
    by_step = {c.step: c for c in res.conversions}
    for s in plan.steps_of(other):
        c = by_step[s.name]
        assert c.runtime == s.runtime and (s.runtime == "tflite" or c.reason.startswith("operator ")), c
    assert all(c.max_abs_diff is not None for c in res.conversions if c.runtime == "tflite"), res.conversions
    wire = [r for r in plan.routes if r.src == tfl and r.dst == other]
    shapes = {t.name: t.shape for s in plan.steps_of(tfl) for t in s.outputs}
    assert wire and any(len(shapes[r.tensor]) == 4 for r in wire), "4-D activations cross from the TFLite stage"
    assert any(io.perm for s in plan.steps_of(tfl) for io in s.io), "the TFLite step is NHWC inside: perms at its edge"
    assert not list((tmp_path / "dist" / tfl).glob("*.onnx")), "the TFLite device's bundle holds no ONNX step"

    agents(tmp_path / "dist")
    (sess,) = sessions.many([tmp_path / "dist"], timeout_s=30)
    worst, agree = 0.0, 0
    for i in range(PHOTOS):
        feeds = {"input": np.ascontiguousarray(photos[i:i + 1])}
        want = reference(efficientnet_lite0_path, feeds)
        (name,) = want
        got = dict(zip([name], sess.run([name], feeds)))
        assert set(got) == {name} and got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
        worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - want[name]))))
        agree += int(np.argmax(got[name]) == np.argmax(want[name]))
    print(f"\nTFLite ({tfl}, first stage) + {plan.steps_of(other)[0].runtime} ({other}) through agents: max abs diff {worst:.2e} over {PHOTOS} photos, "
          f"top-1 agreement {agree}/{PHOTOS}; step checks {[(c.step, c.runtime, c.max_abs_diff, c.reason) for c in res.conversions]}")
    assert worst <= 1e-4 and agree == PHOTOS


def test_minilm_one_tflite_device_and_one_onnx_device_through_agents(minilm_path, tmp_path, agents, sessions):
    """MiniLM at 12 tokens (its head count) split over a TFLite device and an ONNX one: the sentence
    embeddings through the two agents against onnxruntime on the whole model, for sentences padded
    differently (the padding mask is what a wrong layout choice got wrong: docs/tflite.md)."""
    import edgepart.packager as p

    rng = np.random.default_rng(3)

    def sentence(real: int) -> dict[str, np.ndarray]:  # [CLS] words [SEP] then padding
        ids = np.zeros((1, 12), np.int64)
        ids[0, :real] = [101, *rng.integers(2000, 20000, real - 2), 102]
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}

    sample = sentence(9)
    res = p.package(minilm_path, _cluster(tmp_path / "c.yaml", {"dev0": "tflite", "dev1": "onnx"}), out=tmp_path / "dist",
                    format="auto", model_name=f"tflite-minilm-{RUN}", inputs=sample, objective="throughput",
                    input_shapes={k: (1, 12) for k in sample})
    plan = res.plan
    assert {s.device: s.runtime for s in plan.steps} == {"dev0": "tflite", "dev1": "onnx"}, res.conversions
    agents(tmp_path / "dist")
    (sess,) = sessions.many([tmp_path / "dist"], timeout_s=30)
    worst = 1.0
    for feeds in (sample, sentence(5), sentence(12)):
        want = reference(minilm_path, feeds)["sentence_embedding"].ravel().astype(np.float64)
        got = sess.run(["sentence_embedding"], feeds)[0].ravel().astype(np.float64)
        worst = min(worst, float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    print(f"\nMiniLM, {plan.steps[0].device} {plan.steps[0].runtime} then {plan.steps[1].device} {plan.steps[1].runtime} "
          f"through agents: least cosine {worst:.7f} over 3 sentences")
    assert worst >= 0.999
