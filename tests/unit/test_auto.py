"""--strategy auto (docs/planning.md, "Choosing the split"): every candidate planned by its own
strategy, ranked by its own estimates, the best packaged; exact through real agent processes.

Real parts only: EfficientNet-Lite0 from edgepart.testing.zoo and helper graphs, real onnxruntime,
`edgepart run` processes on loopback (each stopped at the end of its test).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import edgepart
import edgepart.packager as p
from edgepart.inputs import random_inputs
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.strategies import names

import graphs

pytestmark = pytest.mark.timeout(240)

SHAPES = {"input": (1, 3, 224, 224)}


def cluster(gflops: dict[str, float], mbps: float, latency_ms: float = 0.2):
    return cluster_from_dict({"devices": [{"name": n, "gflops": g, "memory_mb": 1024} for n, g in gflops.items()],
                              "links": {"default": {"bandwidth_mbps": mbps, "latency_ms": latency_ms}}})


def cluster_yaml(path, gflops: dict[str, float], mbps: float) -> str:
    lines = ["devices:"] + [f"  - {{name: {n}, gflops: {g}, memory_mb: 1024}}" for n, g in gflops.items()]
    lines += ["links:", f"  default: {{bandwidth_mbps: {mbps}, latency_ms: 0.2}}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def invoke(*args):
    """Run `edgepart ARGS` in process, stdout and stderr kept apart."""
    from typer.testing import CliRunner

    from edgepart.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def efficientnet():
    from edgepart.testing import zoo

    return zoo.efficientnet_lite0()


def test_auto_is_registered():
    assert "auto" in names()


@pytest.mark.models
def test_slow_link_efficientnet_picks_one_device_or_a_pipeline_never_a_dense_channel_split(efficientnet):
    auto = p.plan(efficientnet, cluster({"a": 30.0, "b": 30.0}, 50.0), strategy="auto", objective="latency",
                  input_shapes=SHAPES)
    w = auto.winner
    assert w.strategy == "pipeline", auto.reason
    ranked = [c.name for c in auto.ranking if c.ok]
    assert ranked.index("channel, dense") > 0
    dense = next(c for c in auto.ranking if c.name == "channel, dense")
    assert dense.latency_ms > 1.5 * w.latency_ms  # the measured gap is ~100x; the estimate's at least this
    # every candidate is there, and each estimate is its own strategy's figure
    assert {c.strategy for c in auto.ranking} == {"pipeline", "replicas", "spatial", "channel"}
    pipe = next(c for c in auto.ranking if c.name == "pipeline")
    # each candidate's figure is its strategy's own with the fixed costs of its steps and messages
    # (docs/planning.md, "Fixed costs"), above the plan's own estimate without them
    assert pipe.latency_ms == pytest.approx(pipe.planned.latency_with_fixed_ms + pipe.planned.caller_io_ms)
    assert pipe.latency_ms > pipe.planned.latency_ms + pipe.planned.caller_io_ms
    assert dense.latency_ms == pytest.approx(dense.planned.latency_with_fixed_ms)
    assert dense.latency_ms > dense.planned.report.latency_ms == dense.planned.latency_ms


@pytest.mark.models
def test_fast_link_equal_devices_throughput_uses_more_than_one_device(efficientnet):
    auto = p.plan(efficientnet, cluster({"a": 30.0, "b": 30.0}, 1000.0), strategy="auto", objective="throughput",
                  input_shapes=SHAPES)
    assert len(auto.winner.devices) == 2, auto.reason
    one = next(c for c in auto.ranking if c.name.startswith("one device"))
    assert auto.winner.throughput_per_s > 1.5 * one.throughput_per_s



def test_streamed_throughput_is_held_to_what_the_callers_link_carries(efficientnet):
    """At 20 Mbit/s every request's 602 KB input takes 241 ms on the caller's own link, whatever the split:
    no candidate may promise more than that link carries (three devices alone would do several times that)."""
    from edgepart.packager.cost import caller_period_ms
    from edgepart.packager.model.graph import analyse, load_model

    cl = cluster({"a": 30.0, "b": 30.0, "c": 30.0}, 20.0)
    auto = p.plan(efficientnet, cl, strategy="auto", objective="throughput", input_shapes=SHAPES)
    period = caller_period_ms(analyse(load_model(efficientnet), SHAPES), cl)
    assert 240.0 < period < 242.0  # 3*224*224*4 bytes at 20 Mbit/s, and a message's fixed cost
    ok = [c for c in auto.ranking if c.ok]
    assert all(c.throughput_per_s <= 1e3 / period * (1 + 1e-9) for c in ok)
    replicas = next(c for c in ok if c.name == "replicas")
    assert replicas.planned.throughput_per_s > 2 * 1e3 / period  # its own figure counts its devices only
    assert replicas.throughput_per_s == pytest.approx(1e3 / period)

@pytest.mark.models
def test_fast_and_slow_device_latency_gives_the_fast_one(efficientnet):
    auto = p.plan(efficientnet, cluster({"fast": 60.0, "slow": 6.0}, 50.0), strategy="auto", objective="latency",
                  input_shapes=SHAPES)
    assert auto.winner.devices == ("fast",), auto.reason
    pipe = next(c for c in auto.ranking if c.name == "pipeline")
    assert pipe.devices == ("fast",) and [x.device for x in pipe.planned.pipeline.left_out] == ["slow"]
    row = next(r for r in auto.to_dict()["ranking"] if r["candidate"] == "pipeline")
    assert row["left_out"] and row["left_out"][0].startswith("left out slow: with it, latency")


def test_a_candidate_that_cannot_plan_is_listed_with_its_reason():
    """A transformer has no image input: the spatial candidates say why, the others rank."""
    m = graphs.transformer()
    auto = p.plan(m, cluster({"a": 1.0, "b": 1.0}, 100.0), strategy="auto", objective="throughput")
    bad = {c.name: c.why_not for c in auto.ranking if not c.ok}
    assert set(bad) >= {"spatial, gather", "spatial, pipeline rest"}
    assert all("image" in why for name, why in bad.items() if name.startswith("spatial"))
    d = auto.to_dict()
    assert {x["candidate"] for x in d["cannot_plan"]} == set(bad)
    assert d["ranking"][0]["candidate"] == auto.winner.name and d["winner_strategy"] == auto.winner.strategy


def test_plan_auto_prints_the_ranking_and_json(tmp_path):
    path = tmp_path / "residual.onnx"
    onnx.save(graphs.residual(), str(path))
    cl = cluster_yaml(tmp_path / "cluster.yaml", {"a": 1.0, "b": 1.0}, 1000.0)
    res = invoke("plan", path, "-c", cl, "--strategy", "auto", "--objective", "throughput")
    assert res.exit_code == 0, res.output
    for what in ("rank", "one device (", "pipeline", "replicas", "channel, dense", "auto picks", "wins on throughput"):
        assert what in res.stdout, what
    res = invoke("plan", path, "-c", cl, "--strategy", "auto", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["strategy"] == "auto" and d["objective"] == "latency"
    scores = [r["score_ms"] for r in d["ranking"]]
    assert scores == sorted(scores) and d["ranking"][0]["candidate"] == d["winner"]
    assert d["reason"] and d["plan"]
    assert len(d["winner_devices"]) == 1  # latency: one device, no link to cross


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_package_auto_runs_through_agents_exactly(objective, tmp_path):
    """`package --strategy auto` writes the winner's bundles (its plan, its strategy); agent processes
    on loopback answer as the model does (<= 1e-5)."""
    import onnxruntime as ort

    from edgepart.bundle import load_dist
    from edgepart.testing.emulate import AgentProcesses

    path = tmp_path / "residual.onnx"
    onnx.save(graphs.residual(), str(path))
    cl = cluster_yaml(tmp_path / "cluster.yaml", {"a": 1.0, "b": 1.0}, 1000.0)
    res = invoke("package", path, "-c", cl, "--strategy", "auto", "--objective", objective, "-o", tmp_path / "dist",
                 "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    plan = next(iter(load_dist(tmp_path / "dist").values())).plan
    assert plan.plan_id == d["plan_id"] and plan.strategy == d["winner_strategy"]
    assert set(d["bundles"]) == set(d["winner_devices"]) == set(plan.device_names())
    if objective == "throughput":
        assert len(plan.device_names()) == 2
    res = invoke("package", path, "-c", cl, "--strategy", "auto", "--objective", objective, "-o", tmp_path / "dist")
    assert res.exit_code == 0 and "auto picks" in res.stdout and "plan id" in res.stdout, res.output
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with AgentProcesses(tmp_path / "dist", interface="127.0.0.1"):
        with edgepart.InferenceSession(tmp_path / "dist", interface="127.0.0.1", timeout_s=20) as sess:
            for seed in range(3):
                feeds = random_inputs(plan.inputs, seed=seed)
                got = sess.run(None, feeds)
                want = ref.run(None, feeds)
                for g, w in zip(got, want):
                    assert float(np.max(np.abs(np.asarray(g) - w))) <= 1e-5


def test_ties_are_within_a_relative_1e_6_of_the_best_and_go_to_the_simpler():
    """Two estimates a hair apart are a tie wherever they fall (no rounding bins): the candidate listed
    first (the simpler) wins; one 1e-4 apart is not a tie."""
    from edgepart.packager.strategies.auto.rank import Candidate, rank

    for base in (10.0, 10.0000005, 123.4567895):  # wherever a bin edge of log-rounding would fall
        simple = Candidate("one device", "pipeline", devices=("a",), latency_ms=base * (1 + 4e-7))
        split = Candidate("pipeline", "pipeline", devices=("a", "b"), latency_ms=base * (1 - 4e-7))
        slower = Candidate("channel", "channel", devices=("a", "b"), latency_ms=base * 1.001)
        assert [c.name for c in rank([simple, split, slower], "latency")][:2] == ["one device", "pipeline"], base
    faster = Candidate("pipeline", "pipeline", devices=("a", "b"), latency_ms=10.0 * (1 - 1e-4))
    assert rank([Candidate("one device", "pipeline", devices=("a",), latency_ms=10.0), faster], "latency")[0] is faster


def test_a_tie_at_the_callers_link_goes_to_the_most_headroom():
    """Under throughput, candidates that the caller's link holds to the same rate rank by their own
    rate before it (the devices with the most room first), and the reason says so; latency ties still
    go to the simpler."""
    from edgepart.packager.strategies.auto.rank import Candidate, rank, reason

    one = Candidate("one device", "pipeline", devices=("a",), latency_ms=9.0, throughput_per_s=3.3, headroom_per_s=1.4)
    pipe = Candidate("pipeline", "pipeline", devices=("a", "b"), latency_ms=12.0, throughput_per_s=3.3,
                     headroom_per_s=3.4)
    reps = Candidate("replicas", "replicas", devices=("a", "b"), latency_ms=9.0, throughput_per_s=3.3,
                     headroom_per_s=4.3)
    ranked = rank([one, pipe, reps], "throughput")
    assert [c.name for c in ranked] == ["replicas", "pipeline", "one device"]
    assert "the most headroom" in reason(ranked, "throughput") and "4.3 req/s against 3.4" in reason(ranked, "throughput")
    assert [c.name for c in rank([one, pipe, reps], "latency")][:2] == ["one device", "replicas"]
    plain = Candidate("x", "pipeline", devices=("a",), throughput_per_s=2.0)  # never bounded: its own rate
    assert plain.headroom() == 2.0
