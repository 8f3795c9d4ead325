"""The packager's one entry point and its strategy registry (docs/architecture.md, "Strategies").

`edgepart.packager.package(...)` in a separate Python process writes the same bundles as
`edgepart package`; the CLI's `--strategy` help and its errors come from the registry, so a strategy
registered from outside the CLI shows up there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_clean_error, invoke


def _tree(dist: Path) -> dict[str, str]:
    """Every file under dist/ with its sha256; the link keys, made new by every packaging, only by
    name, and each manifest without its keys and signature (docs/bundle-format.md, "Keys")."""
    import hashlib
    import json

    def digest(f: Path) -> str:
        if f.name.endswith(".key"):
            return "a key"
        if f.name == "manifest.json":
            m = {k: v for k, v in json.loads(f.read_text()).items() if k not in ("keys", "signature")}
            return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
        return hashlib.sha256(f.read_bytes()).hexdigest()

    return {str(f.relative_to(dist)): digest(f) for f in sorted(dist.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("strategy", ["pipeline", "channel"])
def test_python_package_writes_the_same_bundles_as_the_cli(files, tmp_path, strategy):
    cli_dist, py_dist = tmp_path / "cli", tmp_path / "py"
    res = invoke("package", files / "residual.onnx", "-c", files / "cluster3.yaml", "-o", cli_dist,
                 "--strategy", strategy, "--json")
    assert res.exit_code == 0, res.output
    cli_id = json.loads(res.stdout)["plan_id"]
    code = ("import edgepart.packager as p; "
            f"r = p.package({str(files / 'residual.onnx')!r}, {str(files / 'cluster3.yaml')!r}, "
            f"out={str(py_dist)!r}, strategy={strategy!r}); print(r.plan.plan_id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == cli_id
    assert _tree(py_dist) == _tree(cli_dist)


def test_plan_from_python_matches_the_cli_json(files):
    import edgepart.packager as p

    planned = p.plan(files / "residual.onnx", files / "cluster3.yaml", objective="throughput")
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--objective", "throughput", "--json")
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)
    ours = planned.to_dict()
    cli.pop("planning_s"), ours.pop("planning_s")
    assert ours == cli


def test_unknown_strategy_lists_the_registered_ones(files):
    from edgepart.packager.strategies import names

    err = assert_clean_error(invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml",
                                    "--strategy", "tiles"), "Unknown strategy 'tiles'")
    for n in names():
        assert f"`{n}`" in err


def test_an_option_of_another_strategy_is_refused_by_name(files, tmp_path):
    import edgepart.packager as p
    from edgepart.errors import PlanningError

    with pytest.raises(PlanningError, match="--comm-budget applies to --strategy channel only"):
        p.package(files / "residual.onnx", files / "cluster3.yaml", out=tmp_path / "d", comm_budget=0.2)
    with pytest.raises(PlanningError, match="--color is not an option of any strategy"):
        p.plan(files / "residual.onnx", files / "cluster3.yaml", color="red")


class _Echo:
    """A strategy defined outside the packager: registered, it must reach the CLI's help and errors."""

    name = "echo-test"
    summary = "a strategy registered by a test, to show the CLI reads the registry"
    options = {"loudness": "how loud"}

    def plan(self, job):
        raise NotImplementedError

    def package(self, job, out, *, report=False):
        raise NotImplementedError


def test_a_registered_strategy_reaches_the_cli_help_and_its_option_checks(files):
    from edgepart.packager.strategies import base

    base.register(_Echo())
    try:
        res = invoke("package", "--help")
        assert res.exit_code == 0
        flat = " ".join(res.output.replace("│", " ").split())
        assert "`echo-test`: a strategy registered by a test" in flat
        assert "`pipeline`:" in flat and "`channel`:" in flat
        import edgepart.packager as p
        from edgepart.errors import PlanningError

        with pytest.raises(PlanningError, match="--loudness applies to --strategy echo-test only"):
            p.plan(files / "residual.onnx", files / "cluster3.yaml", loudness=3)
    finally:
        base._REGISTRY.pop("echo-test", None)
