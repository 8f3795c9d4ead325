"""Plan ids pinned: `edgepart package` on fixed models and clusters gives the same plan, to the byte.

A plan id hashes the whole plan (every step's sub-model sha256, every route and codec, the
estimates), so a restructuring of the packager that changes no behaviour keeps these ids; one that
changes them changes what agents run, and must say so (docs/architecture.md, "Plans"). The ids were
measured the same at 1 and 2 threads, on one core and two.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import graphs
from cli_helpers import CLUSTER3, invoke

CLUSTER2 = """\
devices:
  - {name: a, gflops: 1, memory_mb: 256}
  - {name: b, gflops: 1, memory_mb: 256}
links:
  default: {bandwidth_mbps: 100, latency_ms: 0.5}
"""
CLUSTER3_EQUALISH = """\
devices:
  - {name: a, gflops: 1, memory_mb: 256}
  - {name: b, gflops: 2, memory_mb: 256}
  - {name: c, gflops: 1, memory_mb: 256}
links:
  default: {bandwidth_mbps: 100, latency_ms: 0.5}
"""

# (model, cluster, extra flags) -> plan id
HELPER_PLANS = {
    "residual-pipeline-throughput": ("residual", CLUSTER3, ["--objective", "throughput"], "7adf2d1165252962"),
    "residual-pipeline-auto-codec": ("residual", CLUSTER3, ["--wire-codec", "auto"], "717becb7a3fdf1d3"),
    "residual-channel": ("residual", CLUSTER2, ["--strategy", "channel"], "a4d9d067ee0e2324"),
    "transformer-channel-3": ("transformer", CLUSTER3, ["--strategy", "channel"], "a0b987c67bbf3f9d"),
    "constant-chains-pipeline": ("constant_chains", CLUSTER2, ["--input-shape", "x=2x8"], "4bf260dd02e07fe5"),
}

MINILM_SHAPES = ["--input-shape", "input_ids=1x24", "--input-shape", "attention_mask=1x24"]
REFERENCE_PLANS = {
    "efficientnet-pipeline": ("efficientnet_lite0_path", CLUSTER2, ["--input-shape", "input=1x3x224x224"],
                              "6819173f09405977"),
    "efficientnet-channel": ("efficientnet_lite0_path", CLUSTER2,
                             ["--strategy", "channel", "--input-shape", "input=1x3x224x224"], "8211edb51a8af5da"),
    "minilm-pipeline-3": ("minilm_path", CLUSTER3_EQUALISH, MINILM_SHAPES, "4f9ab09d90298af9"),
    "minilm-channel-3": ("minilm_path", CLUSTER3_EQUALISH, ["--strategy", "channel", *MINILM_SHAPES],
                         "e50ac9e5880752e6"),
}


def _plan_id(tmp_path: Path, model: Path, cluster_text: str, flags: list[str]) -> dict:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(cluster_text)
    res = invoke("package", model, "-c", cluster, "-o", tmp_path / "dist", "--json", *flags)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("case", sorted(HELPER_PLANS))
def test_helper_model_plan_ids_are_pinned(case, tmp_path):
    builder, cluster, flags, expected = HELPER_PLANS[case]
    model = tmp_path / f"{builder}.onnx"
    onnx.save(getattr(graphs, builder)(), str(model))
    assert _plan_id(tmp_path, model, cluster, flags)["plan_id"] == expected


@pytest.mark.models
@pytest.mark.parametrize("case", sorted(REFERENCE_PLANS))
def test_reference_model_plan_ids_are_pinned(case, tmp_path, request):
    fixture, cluster, flags, expected = REFERENCE_PLANS[case]
    model = request.getfixturevalue(fixture)
    got = _plan_id(tmp_path, model, cluster, flags)["plan_id"]
    assert got == expected, (f"{case}: plan id {got}, pinned {expected}; if the model export itself "
                             f"changed (torch version), its sha256 is in the plan: {model}")
