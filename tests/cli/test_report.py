"""`edgepart package --report`: one self-contained HTML file per package run (issue 4), with the bytes
crossing per split layer and in total (dense vs used), compute and parameters per device, routes,
plots, and fidelity on held-out inputs. Run through the real CLI on the digits CNN trained here."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli_helpers import assert_clean_error, invoke

pytestmark = pytest.mark.timeout(300)  # the shared fixture trains the digits CNN: ~4 s idle, a minute on a busy machine

pytest.importorskip("torch")
pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from digits_cnn import digits_cnn  # noqa: E402

CLUSTER2 = """\
devices:
  - {name: left, gflops: 5, memory_mb: 64}
  - {name: right, gflops: 2, memory_mb: 64}
links:
  default: {bandwidth_mbps: 50, latency_ms: 1}
"""
N_CALIB = 100  # the last 20 are held out by default
PNG = "data:image/png;base64,"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """digits.onnx (trained, dynamic batch), calib.npz (100 test images) and cluster2.yaml."""
    d = tmp_path_factory.mktemp("report")
    model, data = digits_cnn()
    onnx.save(model, str(d / "digits.onnx"))
    np.savez(d / "calib.npz", x=data.x_test[:N_CALIB])
    (d / "cluster2.yaml").write_text(CLUSTER2)
    return d


def package(digits: Path, out: Path, *extra: str):
    return invoke("package", digits / "digits.onnx", "-c", digits / "cluster2.yaml", "-o", out / "dist", *extra)


def layer_rows(text: str) -> dict[str, tuple[int, int]]:
    return {m[0]: (int(m[1]), int(m[2]))
            for m in re.findall(r'<tr data-layer="([^"]*)" data-dense="(\d+)" data-used="(\d+)">', text)}


def check_html(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert text.count(PNG) >= 3  # bytes per layer, devices, fidelity
    for uri in re.findall(r'src="([^"]+)"', text):
        assert uri.startswith(PNG)  # nothing outside the file
    assert "<script" not in text and "<link" not in text
    return text


def test_channel_report_dense_split_is_exact(digits, tmp_path):
    html = tmp_path / "out" / "report.html"  # its folder does not exist yet
    res = package(digits, tmp_path, "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--report", html, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["report_html"] == str(html)
    text = check_html(html)

    layers = d["report"]["layers"]["layers"]
    assert len(layers) == 3 and layer_rows(text) == {x["node"]: (x["dense_bytes"], x["used_bytes"]) for x in layers}
    dense, used = d["report"]["layers"]["dense_bytes"], d["report"]["layers"]["used_bytes"]
    assert dense == used == 6144  # trained dense weights: every channel is used (docs/channel.md)
    s = d["summary"]
    assert s["split_layers"] == {"count": 3, "dense_bytes": dense, "used_bytes": used, "ratio": 1.0}
    assert s["cross_device_bytes"] == d["report"]["cross_device_bytes"] == d["estimates"]["cross_device_bytes"]
    assert f"{dense:,}" in text and d["plan_id"] in text

    for dev, macs in d["report"]["macs"].items():
        assert f'data-device="{dev}" data-macs="{macs}" data-params="{d["report"]["param_bytes"][dev]}"' in text

    f = s["fidelity"]
    assert f["inputs"].startswith("one random input") and f["samples"] == 1
    assert f["max_abs_diff"] <= 1e-4 and f["mean_rel_error"] <= 1e-5 and f["top1_agreement"] == 1.0
    assert f["exact_max_abs_diff"] is None and s["restructured"] is None
    assert 'data-output="logits"' in text and "one random input" in text


def test_channel_report_with_repurpose_measures_held_out_samples(digits, tmp_path):
    from edgepart.packager.strategies.channel.restructure import repurpose

    html = tmp_path / "report.html"
    budget = 0.2
    res = package(digits, tmp_path, "--strategy", "channel", "--calibration", digits / "calib.npz",
                  "--comm-budget", str(budget), "--report", html, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    s, text = d["summary"], check_html(html)

    # RePurpose saw only the first 80 samples: the same run in process on them gives the same report
    model = onnx.load(str(digits / "digits.onnx"))
    x = np.load(digits / "calib.npz")["x"]
    assert d["sparse"] == json.loads(json.dumps(repurpose(model, {"x": x[:80]}, 2, budget).report.to_dict()))
    assert s["restructured"] == {"method": "RePurpose", "comm_budget": budget, "steps": "assign+prune+adjust",
                                 "calibration_samples": 80, "held_out": 20}

    split = s["split_layers"]
    assert split["used_bytes"] <= budget * split["dense_bytes"] and split["ratio"] >= 1 / budget - 1e-9
    assert layer_rows(text) == {x["node"]: (x["dense_bytes"], x["used_bytes"]) for x in d["report"]["layers"]["layers"]}
    assert f"{split['ratio']:.2f}x" in text
    for layer in d["sparse"]["layers"]:  # the per-layer table carries RePurpose's output error
        if layer["node"] in layer_rows(text):
            assert f"{layer['error']:.4f}" in text

    f = s["fidelity"]
    assert f["samples"] == 20 and f["inputs"].startswith("20 held-out calibration samples")
    assert f["exact_max_abs_diff"] <= 1e-4  # the compiler is exact: the difference is RePurpose's
    assert 0 < f["mean_rel_error"] < 0.5 and f["max_abs_diff"] > f["exact_max_abs_diff"]
    assert f["top1_agreement"] >= 0.9


def test_holdout_zero_measures_on_the_calibration_samples(digits, tmp_path):
    res = package(digits, tmp_path, "--strategy", "channel", "--calibration", digits / "calib.npz",
                  "--comm-budget", "0.5", "--holdout", "0", "--report", tmp_path / "r.html", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["summary"]
    assert s["restructured"]["held_out"] == 0 and s["fidelity"]["samples"] == N_CALIB
    assert "none held out" in s["fidelity"]["inputs"]


def test_report_path_is_printed_last(digits, tmp_path):
    html = tmp_path / "r.html"
    res = package(digits, tmp_path, "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--report", html)
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stdout.splitlines() if x.strip()]
    assert "fidelity on one random input" in res.stdout
    assert lines[-1].startswith("report written to") and html.name in lines[-1] and html.is_file()


def test_pipeline_report(digits, tmp_path):
    html = tmp_path / "pipeline.html"
    res = package(digits, tmp_path, "--input-shape", "x=1x1x8x8", "--report", html, "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    text = check_html(html)
    s = d["summary"]
    assert s["strategy"] == "pipeline" and "bytes per cut" in text
    sent = [st["send_bytes"] for st in d["stages"][:-1]]
    assert [v for v, _ in layer_rows(text).values()] == sent and s["cuts"]["used_bytes"] == sum(sent)
    assert s["fidelity"]["max_abs_diff"] <= 1e-5


def test_names_are_escaped(digits, tmp_path):
    weird = tmp_path / "m<b>&x.onnx"
    weird.write_bytes((digits / "digits.onnx").read_bytes())
    html = tmp_path / "r.html"
    res = invoke("package", weird, "-c", digits / "cluster2.yaml", "-o", tmp_path / "dist", "--strategy", "channel",
                 "--input-shape", "x=1x1x8x8", "--report", html)
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert "m&lt;b&gt;&amp;x" in text and "<b>&x" not in text


@pytest.mark.parametrize("where", ["parent is a file", "a folder"])
def test_unwritable_report_path(digits, tmp_path, where):
    (tmp_path / "afile").write_text("")
    path = tmp_path / "afile" / "r.html" if where == "parent is a file" else tmp_path
    res = package(digits, tmp_path, "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--report", path)
    assert_clean_error(res, str(path), "--report" if where == "parent is a file" else "Give a file name")
    assert not (tmp_path / "dist").exists()  # it fails before any work


def test_holdout_needs_calibration(digits, tmp_path):
    res = package(digits, tmp_path, "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--holdout", "0.3")
    assert_clean_error(res, "--holdout", "--calibration")


def test_too_few_calibration_samples_to_hold_out(digits, tmp_path):
    np.savez(tmp_path / "one.npz", x=np.load(digits / "calib.npz")["x"][:1])
    res = package(digits, tmp_path, "--strategy", "channel", "--calibration", tmp_path / "one.npz",
                  "--comm-budget", "0.2", "--report", tmp_path / "r.html")
    assert_clean_error(res, "1 sample", "--holdout 0")
    assert not (tmp_path / "r.html").exists()


def test_replicate_the_first_layers(digits, tmp_path):
    """`--replicate`: both devices compute the first conv whole; exact (verify), fewer bytes, said so."""
    res = package(digits, tmp_path / "plain", "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--json")
    assert res.exit_code == 0, res.output
    plain = json.loads(res.stdout)
    assert plain["replicated"] is None
    res = package(digits, tmp_path / "rep", "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--replicate", "0.5",
                  "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    rep = d["replicated"]
    assert rep["nodes"] and rep["extra_fraction"] <= 0.5 and rep["bytes_after"] < rep["bytes_before"]
    assert d["report"]["cross_device_bytes"] < plain["report"]["cross_device_bytes"]
    res = invoke("verify", tmp_path / "rep" / "dist", "-m", digits / "digits.onnx", "--inputs", digits / "calib.npz", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"], res.output
    html = tmp_path / "rep.html"
    res = package(digits, tmp_path / "rep2", "--strategy", "channel", "--input-shape", "x=1x1x8x8", "--replicate", "0.5",
                  "--report", html)
    assert res.exit_code == 0 and "replicate:" in res.stdout and "computed whole on every device" in res.stdout
    # the baseline stays the original model's dense split, not the rewritten model's (which counts copies)
    dense = plain["report"]["layers"]["dense_bytes"]
    rows = layer_rows(check_html(html))
    assert sum(d for d, _ in rows.values()) == dense > 0
    assert f"dense {dense:,} (the original model)" in res.stdout
    # before lowrank: the budget stays a fraction of the original dense split
    res = package(digits, tmp_path / "lr", "--strategy", "channel", "--replicate", "0.5", "--calibration",
                  digits / "calib.npz", "--comm-budget", "0.3", "--method", "lowrank", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["replicated"]["nodes"] == rep["nodes"] and d["sparse"]["replicated"]["nodes"] == rep["nodes"]
    assert d["sparse"]["used_bytes"] <= 0.3 * d["sparse"]["dense_bytes"] + 1


@pytest.mark.parametrize("extra,needle", [
    (("--replicate", "0.1"), "--strategy channel only"),
    (("--strategy", "channel", "--replicate", "0.1", "--calibration", "CAL", "--comm-budget", "0.3"), "--method lowrank"),
])
def test_replicate_errors(digits, tmp_path, extra, needle):
    extra = tuple(str(digits / "calib.npz") if e == "CAL" else e for e in extra)
    assert_clean_error(package(digits, tmp_path, *extra), needle)


def test_plan_lists_the_prefixes_to_replicate(digits):
    res = invoke("plan", digits / "digits.onnx", "-c", digits / "cluster2.yaml", "--strategy", "channel",
                 "--input-shape", "x=1x1x8x8", "--replicate", "0.5", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["replicated"]["nodes"] and d["replicated"]["options"]
    plain = invoke("plan", digits / "digits.onnx", "-c", digits / "cluster2.yaml", "--strategy", "channel",
                   "--input-shape", "x=1x1x8x8", "--json")
    assert json.loads(plain.stdout)["replicated"] is None
    assert d["report"]["cross_device_bytes"] < json.loads(plain.stdout)["report"]["cross_device_bytes"]
    res = invoke("plan", digits / "digits.onnx", "-c", digits / "cluster2.yaml", "--strategy", "channel",
                 "--input-shape", "x=1x1x8x8", "--replicate", "0.5")
    assert res.exit_code == 0 and "prefix up to" in res.stdout and "of the model's MACs per device" in res.stdout
