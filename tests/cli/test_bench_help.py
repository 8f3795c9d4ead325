"""Every benchmark in bench/ starts: its `--help` prints its usage. A benchmark is run by hand, seldom,
so an import that a refactoring broke (a helper moved to another bench module) would otherwise only
show on the day someone measures with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_benchmark_answers_help(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd=BENCH.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout.lower(), r.stdout[-2000:]
