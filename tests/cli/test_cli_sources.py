"""`edgepart plan --sources` (docs/priority.md, "From the command line"): per source, where its layers run and
its expected latency under the priority-aware allocation, the priority-blind baseline and local-only, as a
table, under --json's "sources" key and as a picture; --simulate adds the simulator's percentiles; every
wrong input is one clear paragraph."""

from __future__ import annotations

import json
import re

import pytest

from cli_helpers import CLUSTER3, assert_clean_error, invoke
from test_cli_output import PLAN_KEYS

pytestmark = pytest.mark.timeout(120)

SOURCES = """\
sources:
  - {name: door, device: door-cam, priority: 10, rate_hz: 25, deadline_ms: 100}
  - {name: yard, device: yard-cam, priority: 1, rate_hz: 25}
"""
SHAPE = ("--input-shape", "input=1x3x224x224")
MODES = ("priority", "blind", "local")


@pytest.fixture(scope="module")
def setup(efficientnet_lite0_path, cameras_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    (d / "cluster.yaml").write_text(cameras_cluster)
    (d / "sources.yaml").write_text(SOURCES)
    return efficientnet_lite0_path, d


def plan(setup, *args):
    model, d = setup
    return invoke("plan", model, "-c", d / "cluster.yaml", *SHAPE, "--sources", d / "sources.yaml", *args)


@pytest.fixture(scope="module")
def figures(setup) -> dict:
    res = plan(setup, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _ms(x: float | None) -> str:
    return "overloaded" if x is None else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


@pytest.mark.models
def test_json_keeps_the_plan_and_adds_every_source_in_every_mode(figures):
    d = figures
    assert set(d) >= PLAN_KEYS and d["stages"]  # the plan's own figures are unchanged
    s = d["sources"]
    assert [x["name"] for x in s["by_source"]] == ["door", "yard"]
    n = s["n_nodes"]
    assert n == d["model"]["nodes"]
    for x in s["by_source"]:
        assert set(x["modes"]) == set(MODES)
        for m, f in x["modes"].items():
            assert 0 <= f["cut"] <= n
            if m == "local":
                assert f["cut"] == n and f["helpers"] == []
                assert f["expected_ms"] is None  # 25 frames/s of 79 ms each: over capacity at home
            else:
                assert f["cut"] < n and f["helpers"] and x["device"] not in f["helpers"]
                parts = f["local_ms"] + f["remote_ms"] + f["transfer_ms"] + f["wait_ms"]
                assert f["expected_ms"] == pytest.approx(parts, abs=1e-3) and f["expected_ms"] > 0
            assert f["meets_deadline"] is (None if x["deadline_ms"] is None else
                                           (f["expected_ms"] is not None and f["expected_ms"] <= x["deadline_ms"]))
    assert set(s["modes"]) == set(MODES) and s["simulation"] is None


@pytest.mark.models
def test_priority_buys_the_top_source_latency_against_the_blind_baseline(figures):
    s = figures["sources"]
    door = s["by_source"][0]["modes"]
    assert door["priority"]["expected_ms"] < 0.8 * door["blind"]["expected_ms"]  # contended: it matters here
    top = s["top"]
    assert top["source"] == "door" and top["priority_ms"] == door["priority"]["expected_ms"]
    assert top["saved_ms"] == pytest.approx(door["blind"]["expected_ms"] - door["priority"]["expected_ms"], abs=1e-3)
    assert s["summary"].startswith("Priority buys door (priority 10)")
    # and the low-priority source pays for it, in expectation
    yard = s["by_source"][1]["modes"]
    assert yard["priority"]["expected_ms"] > yard["blind"]["expected_ms"]


@pytest.mark.models
def test_table_lists_every_source_with_its_figures(setup, figures):
    res = plan(setup)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "estimated latency" in out  # the pipeline plan's table comes first, as without --sources
    for col in ("priority-aware", "aware", "blind", "local", "deadline"):
        assert col in out
    for x in figures["sources"]["by_source"]:
        row = next(line for line in out.splitlines() if line.startswith(f"{x['name']} "))
        assert x["device"] in row and f"{x['priority']:g}" in row and f"{x['rate_hz']:g}" in row
        for m in MODES:
            assert _ms(x["modes"][m]["expected_ms"]) in out
    assert "overloaded" in out  # local-only
    assert "yes/yes/no" in out  # door's deadline: aware, blind, local-only
    assert "first 15 here" in out or re.search(r"first \d+ here, \d+ on jetson", out)
    assert figures["sources"]["summary"].split(":")[0] in " ".join(out.split())


@pytest.mark.models
def test_simulate_prints_per_source_percentiles_beside_the_expected_figures(setup):
    res = plan(setup, "--simulate", "5")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "simulated 5 s" in out
    head = next(line for line in out.splitlines() if line.startswith("source alloc"))
    assert head.split() == ["source", "alloc", "expected", "mean", "p50", "p95", "p99", "done/s", "misses", "refused",
                            "left"]
    rows = [line.split() for line in out.splitlines() if re.match(r"(door|yard) +(aware|blind|local) ", line)]
    assert len(rows) == 6 and {(r[0], r[1]) for r in rows} == {(s, m) for s in ("door", "yard")
                                                               for m in ("aware", "blind", "local")}
    for cells in rows:
        mean, p50, p95, p99 = (float(c) for c in cells[3:7])
        assert 0 < p50 <= p95 <= p99 and mean > 0
    res = plan(setup, "--simulate", "5", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["sources"]
    assert s["simulation"]["duration_s"] == 5 and set(s["simulation"]["modes"]) == set(MODES)
    door = s["by_source"][0]["modes"]
    for m in MODES:
        sim = door[m]["simulated"]
        assert {"mean_ms", "p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "deadline_misses", "refused"} <= set(sim)
        assert sim["done"] > 0 and sim["p50_ms"] <= sim["p99_ms"]
    # the simulator agrees with the expectation on what matters: door is faster with priority
    assert door["priority"]["simulated"]["mean_ms"] < door["blind"]["simulated"]["mean_ms"]


@pytest.mark.models
def test_plot_draws_the_sources_as_grouped_bars(setup, tmp_path):
    png = tmp_path / "sources.png"
    res = plan(setup, "--plot", png)
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "picture written to" in res.stdout


# -- wrong inputs: one paragraph each, on the small residual model (fast) ----------------------------------

@pytest.fixture(scope="module")
def small(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_sources")
    (d / "cluster.yaml").write_text(CLUSTER3)
    return files / "residual.onnx", d


GOOD3 = "sources:\n  - {name: door, device: alpha, priority: 10, rate_hz: 5}\n  - {name: yard, device: beta, priority: 1, rate_hz: 5}\n"


def test_small_model_with_sources_runs_and_without_keeps_its_json(small):
    model, d = small
    (d / "good.yaml").write_text(GOOD3)
    res = invoke("plan", model, "-c", d / "cluster.yaml", "--json")
    assert res.exit_code == 0, res.output
    assert "sources" not in json.loads(res.stdout)
    res = invoke("plan", model, "-c", d / "cluster.yaml", "--sources", d / "good.yaml", "--json")
    assert res.exit_code == 0, res.output
    assert [x["name"] for x in json.loads(res.stdout)["sources"]["by_source"]] == ["door", "yard"]


@pytest.mark.parametrize("text, args, needles", [
    ("sources:\n  - {name: door, device: garage, priority: 10, rate_hz: 5}\n", (),
     ("'garage'", "not a device of the cluster", "alpha, beta, gamma")),
    ("sources: [\n", (), ("is not valid YAML", "line 2")),
    ("sources:\n  - {name: door, device: alpha, priority: 0, rate_hz: 5}\n", (), ("priority",)),
    ("sources:\n  - {name: door, device: alpha, priority: 1, rate_hz: 5, fps: 3}\n", (), ("fps",)),
    (GOOD3, ("--strategy", "channel"), ("--sources does not apply to --strategy channel", "pipeline")),
    (GOOD3, ("--simulate", "0"), ("--simulate takes a number of simulated seconds above 0",)),
    (GOOD3, ("--simulate", "-3"), ("--simulate takes a number of simulated seconds above 0",)),
])
def test_bad_sources_inputs_are_one_clear_paragraph(small, text, args, needles):
    model, d = small
    (d / "s.yaml").write_text(text)
    res = invoke("plan", model, "-c", d / "cluster.yaml", "--sources", d / "s.yaml", *args)
    assert_clean_error(res, *needles)


def test_unreadable_sources_paths_and_a_lone_simulate_are_clean_errors(small, tmp_path):
    model, d = small
    cl = d / "cluster.yaml"
    assert_clean_error(invoke("plan", model, "-c", cl, "--sources", tmp_path / "nope.yaml"), "does not exist")
    assert_clean_error(invoke("plan", model, "-c", cl, "--sources", tmp_path), "is a folder")
    (tmp_path / "frame.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xfe\xff")
    assert_clean_error(invoke("plan", model, "-c", cl, "--sources", tmp_path / "frame.jpg"), "not a text file")
    assert_clean_error(invoke("plan", model, "-c", cl, "--simulate", "5"), "--simulate", "--sources")
    (d / "good.yaml").write_text(GOOD3)
    assert_clean_error(invoke("plan", model, "-c", cl, "--sources", d / "good.yaml", "--plot",
                              tmp_path / "missing" / "p.png"), "folder", "does not exist")


# -- `package --sources` (docs/priority.md, "Plans with sources") ------------------------------------------

@pytest.mark.parametrize("schedule, rule", [(None, "priority"), ("blind", "fifo"), ("local", "fifo")])
def test_package_with_sources_writes_one_plan_with_a_lane_per_source(small, tmp_path, schedule, rule):
    from edgepart.bundle import load_bundle

    model, d = small
    (d / "good.yaml").write_text(GOOD3)
    extra = ("--schedule", schedule) if schedule else ()
    res = invoke("package", model, "-c", d / "cluster.yaml", "--sources", d / "good.yaml", *extra, "-o",
                 tmp_path / "dist", "--insecure", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["sources"]["mode"] == (schedule or "priority") and out["sources"]["rule"] == rule
    plan = load_bundle(tmp_path / "dist" / "alpha").plan
    assert plan.plan_id == out["plan_id"] and plan.lanes.names == ("door", "yard") and plan.lanes.rule == rule
    assert {s.source for s in plan.steps} == {"door", "yard"}
    for ln in plan.lanes.lanes:  # each source's inputs go to its own device, which runs its first layers
        view = plan.lane(ln.source)
        assert {r.dst for r in view.routes_from("@caller")} == {ln.device}
        assert any(s.device == ln.device for s in view.steps)
    res = invoke("package", model, "-c", d / "cluster.yaml", "--sources", d / "good.yaml", "-o", tmp_path / "d2",
                 "--insecure")
    assert res.exit_code == 0, res.output
    assert "door" in res.stdout and "InferenceSession(dist, source=NAME)" in " ".join(res.stdout.split())


def test_package_sources_options_are_clean_errors(small, tmp_path):
    model, d = small
    (d / "good.yaml").write_text(GOOD3)
    cl = d / "cluster.yaml"
    assert_clean_error(invoke("package", model, "-c", cl, "--schedule", "blind", "-o", tmp_path / "a"),
                       "--schedule places several sources", "--sources")
    assert_clean_error(invoke("package", model, "-c", cl, "--sources", d / "good.yaml", "--schedule", "fast", "-o",
                              tmp_path / "b"), "--schedule must be one of", "priority, blind, local")
    assert_clean_error(invoke("package", model, "-c", cl, "--sources", d / "good.yaml", "--strategy", "channel", "-o",
                              tmp_path / "c"), "--sources does not apply to --strategy channel")
    assert_clean_error(invoke("package", model, "-c", cl, "--sources", tmp_path / "nope.yaml", "-o", tmp_path / "e"),
                       "does not exist")
