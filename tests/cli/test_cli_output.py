"""What the CLI prints when things go right: JSON that parses with the documented keys (see
docs/planning.md and docs/bundle-format.md), a PNG for --plot, and a --help that names every option."""

from __future__ import annotations

import json
import re

import pytest
import typer

from cli_helpers import invoke

pytestmark = pytest.mark.timeout(120)

PLAN_KEYS = {"objective", "latency_ms", "period_ms", "throughput_per_s", "planning_s", "model", "stages"}
MODEL_KEYS = {"nodes", "mflops", "param_mb"}
STAGE_KEYS = {"stage", "device", "nodes", "first", "last", "mflops", "param_mb", "memory_mb", "send_bytes",
              "compute_ms", "send_ms", "link_busy_ms", "crossing"}
VERIFY_KEYS = {"ok", "atol", "plan_id", "model_matches_plan", "outputs"}
INSPECT_KEYS = {"device", "plan_id", "strategy", "model", "steps", "receives", "sends"}


def check_plan_json(d: dict, n_devices: int) -> None:
    assert set(d) >= PLAN_KEYS
    assert set(d["model"]) == MODEL_KEYS
    stages = d["stages"]
    assert len(stages) == n_devices and [s["stage"] for s in stages] == list(range(n_devices))
    for s in stages:
        assert set(s) == STAGE_KEYS
    assert stages[0]["nodes"][0] == 0 and stages[-1]["nodes"][1] == d["model"]["nodes"]
    for a, b in zip(stages, stages[1:]):
        assert a["nodes"][1] == b["nodes"][0]
        assert a["crossing"] and a["send_bytes"] > 0
    assert stages[-1]["crossing"] == [] and stages[-1]["send_bytes"] == 0
    assert len({s["device"] for s in stages}) == n_devices
    assert d["latency_ms"] == pytest.approx(sum(s["compute_ms"] + s["send_ms"] for s in stages))
    assert d["period_ms"] == pytest.approx(max(max(s["compute_ms"], s["link_busy_ms"]) for s in stages))
    assert d["throughput_per_s"] == pytest.approx(1e3 / d["period_ms"])
    assert d["model"]["mflops"] == pytest.approx(sum(s["mflops"] for s in stages))


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_plan_json(files, objective):
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--json", "--objective", objective)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["objective"] == objective
    check_plan_json(d, 3)


def test_plan_table(files):
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml")
    assert res.exit_code == 0, res.output
    assert "estimated latency" in res.stdout and "alpha" in res.stdout and "gamma" in res.stdout


def test_plan_channel_strategy_matches_what_package_writes(files, tmp_path):
    """`plan --strategy channel` prints the figures of the channel split that `package` would write."""
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--strategy", "channel", "--json")
    assert res.exit_code == 0, res.output
    planned = json.loads(res.stdout)["report"]
    res = invoke("package", files / "residual.onnx", "-c", files / "cluster3.yaml", "--strategy", "channel", "--json",
                 "-o", tmp_path / "dist")
    assert res.exit_code == 0, res.output
    packaged = json.loads(res.stdout)["report"]
    assert planned["cross_device_bytes"] == packaged["cross_device_bytes"] > 0
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--strategy", "channel")
    assert res.exit_code == 0, res.output
    assert "bytes between devices per inference" in res.stdout
    assert all(d in res.stdout for d in ("alpha", "beta", "gamma"))


def test_plan_plot_writes_a_png(files, tmp_path):
    png = tmp_path / "plan.png"
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--plot", png)
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "picture written to" in res.stdout
    # --json keeps stdout pure JSON while still writing the picture
    png2 = tmp_path / "plan2.png"
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--plot", png2, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["stages"]
    assert png2.read_bytes()[:4] == b"\x89PNG"


def test_package_json(files, tmp_path):
    res = invoke("package", files / "residual.onnx", "-c", files / "cluster3.yaml", "-o", tmp_path / "dist", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    check_plan_json(d, 3)
    assert set(d["bundles"]) == {"alpha", "beta", "gamma"}
    assert len(d["plan_id"]) == 16
    for dev, path in d["bundles"].items():
        assert (tmp_path / "dist" / dev / "manifest.json").is_file() and path.endswith(dev)


def test_inspect_json_and_table(packaged):
    routes_in, routes_out = set(), set()
    for bundle in sorted(p for p in packaged.iterdir() if p.is_dir()):
        res = invoke("inspect", bundle, "--json")
        assert res.exit_code == 0, res.output
        d = json.loads(res.stdout)
        assert set(d) == INSPECT_KEYS and d["device"] == bundle.name and d["strategy"] == "pipeline"
        assert len(d["steps"]) == 1 and d["steps"][0]["nodes"] > 0
        routes_in |= {(t, src, d["device"]) for t, src in d["receives"]}
        routes_out |= {(t, d["device"], dst) for t, dst in d["sends"]}
        res = invoke("inspect", bundle)
        assert res.exit_code == 0 and "files verified" in res.stdout
    # what one device sends, another receives; the caller feeds x and gets y
    assert {r for r in routes_out if r[2] != "@caller"} == {r for r in routes_in if r[1] != "@caller"}
    assert any(t == "x" and src == "@caller" for t, src, _ in routes_in)
    assert any(t == "y" and dst == "@caller" for t, _, dst in routes_out)


def test_verify_json(packaged, files):
    res = invoke("verify", packaged, "-m", files / "residual.onnx", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert set(d) == VERIFY_KEYS
    assert d["ok"] is True and d["model_matches_plan"] is True and d["atol"] == 1e-5
    assert set(d["outputs"]) == {"y"} and set(d["outputs"]["y"]) == {"max_abs_diff"}
    assert 0 <= d["outputs"]["y"]["max_abs_diff"] <= 1e-5
    res = invoke("verify", packaged, "-m", files / "residual.onnx")
    assert res.exit_code == 0 and "the split is exact within atol" in res.stdout and "DIFFERS" not in res.stdout


# -- --help ------------------------------------------------------------------------------------------

def _commands():
    from edgepart.cli import app

    return typer.main.get_command(app).commands


def test_top_level_help_lists_every_command():
    res = invoke("--help")
    assert res.exit_code == 0
    for name in _commands():
        assert re.search(rf"(?m)^\W*{re.escape(name)}\s", res.stdout), f"`{name}` not in edgepart --help"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_mentions_every_option(name):
    cmd = _commands()[name]
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert cmd.help and cmd.help.split("\n")[0].split(":")[0][:30] in " ".join(res.stdout.split())
    for p in cmd.params:
        if isinstance(p, typer.core.TyperArgument):
            assert p.help, f"{name} {p.name}: argument without help"
            continue
        assert p.help, f"{name} {p.opts}: option without help"
        for opt in p.opts + p.secondary_opts:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", res.stdout), f"{opt} not in `edgepart {name} --help`"


def test_plan_json_memory_uses_the_units_of_cluster_yaml(files, tmp_path):
    import onnx

    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.cost import CostModel
    from edgepart.packager.model.graph import analyse

    res = invoke("plan", files / "big.onnx", "-c", files / "cluster3.yaml", "--json")
    stages = json.loads(res.stdout)["stages"]
    cost = CostModel(analyse(onnx.load(str(files / "big.onnx"))), load_cluster(files / "cluster3.yaml"))
    # give each device just what its stage needs, in cluster.yaml's unit, and plan again
    need_mb = {s["device"]: cost.stage_memory_bytes(*s["nodes"]) / 2**20 * 1.0001 for s in stages}
    lines = ["devices:"] + [f"  - {{name: {d}, gflops: 1, memory_mb: {m}}}" for d, m in need_mb.items()]
    (tmp_path / "tight.yaml").write_text("\n".join(lines) + "\n")
    res = invoke("plan", files / "big.onnx", "-c", tmp_path / "tight.yaml", "--json")
    assert res.exit_code == 0, res.output
    for s in json.loads(res.stdout)["stages"]:
        assert s["memory_mb"] <= need_mb[s["device"]], f"{s['device']}: plan says {s['memory_mb']} MB"
