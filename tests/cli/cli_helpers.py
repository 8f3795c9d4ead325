"""Shared helpers of the CLI tests: run the CLI in process, and check an error is a clean one."""

from __future__ import annotations

from typer.testing import CliRunner

CLUSTER3 = """\
devices:
  - {name: alpha, gflops: 2, memory_mb: 64}
  - {name: beta, gflops: 1, memory_mb: 64}
  - {name: gamma, gflops: 3, memory_mb: 64}
links:
  default: {bandwidth_mbps: 1000, latency_ms: 0.1}
"""


def invoke(*args: str):
    """Run `edgepart ARGS` in process, stdout and stderr kept apart."""
    from edgepart.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(res, *needles: str, code: int = 2) -> str:
    """A non-zero exit, no traceback, and one paragraph on stderr that contains every needle."""
    out = res.output
    assert res.exit_code == code, f"exit {res.exit_code}, output:\n{out}"
    assert isinstance(res.exception, SystemExit), f"{res.exception!r} escaped:\n{out}"
    assert "Traceback" not in out
    err = res.stderr.strip()
    assert err.startswith("error:"), err
    assert len(err.splitlines()) == 1, f"more than one paragraph:\n{err}"
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    return err
