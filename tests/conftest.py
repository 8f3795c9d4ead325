"""Shared test fixtures. The reference models are exported once per machine (cached by
`edgepart.testing.zoo`) and handed out as session-scoped paths; without the `models` extra the
tests that need them are skipped, not failed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

# Signing keys and the trust store of bundle signers (edgepart.signing) live in a folder of this run,
# not the developer's ~/.config/edgepart; agents started by tests inherit it.
_CONFIG = os.environ.setdefault("EDGEPART_CONFIG_DIR", tempfile.mkdtemp(prefix="edgepart-config-"))


def _model(make_name: str) -> Callable[[], Path]:
    def fixture() -> Path:
        try:
            from edgepart.errors import MissingExtraError
            from edgepart.testing import zoo
        except ImportError as e:  # not a source checkout (edgepart.testing is not in the wheel)
            pytest.skip(f"needs a source checkout with edgepart.testing ({e})")
        try:
            return getattr(zoo, make_name)()
        except MissingExtraError as e:
            pytest.skip(str(e))

    fixture.__name__ = f"{make_name}_path"
    return fixture


efficientnet_lite0_path = pytest.fixture(scope="session", name="efficientnet_lite0_path")(_model("efficientnet_lite0"))
minilm_path = pytest.fixture(scope="session", name="minilm_path")(_model("minilm"))
ppocr_det_path = pytest.fixture(scope="session", name="ppocr_det_path")(_model("ppocr_det"))


@pytest.fixture(scope="session")
def cameras_cluster() -> str:
    """cluster.yaml of the tests of several sources (docs/priority.md): two cameras of 10 GFLOP/s, a
    40 GFLOP/s helper and a 10 GFLOP/s one. EfficientNet-Lite0 (0.8 GFLOP) at 25 frames/s from each
    camera keeps the fast helper busy (rho ~0.75), where the order of its queue matters."""
    return """\
devices:
  - {name: door-cam, gflops: 10}
  - {name: yard-cam, gflops: 10}
  - {name: jetson, gflops: 40}
  - {name: pi, gflops: 10}
links:
  default: {bandwidth_mbps: 1000, latency_ms: 0.5}
"""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say the seed of the random test order (pytest-randomly), so a failing order can be rerun
    with `-p randomly --randomly-seed=N`; -q hides the header where the plugin says it."""
    seed = getattr(session.config.option, "randomly_seed", None)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and tr is not None:
        tr.write_line(f"test order randomised: --randomly-seed={seed}")


def pytest_terminal_summary(terminalreporter):
    """Print the seed spreads tests recorded with record_property("seed_spread", line) (passed or
    failed), so that every run's log, -q included, shows the median and worst over seeds behind each
    accuracy claim (tests/models/seeds.py)."""
    lines = [value for key in ("passed", "failed") for rep in terminalreporter.stats.get(key, ())
             if getattr(rep, "when", None) == "call" for name, value in rep.user_properties if name == "seed_spread"]
    if lines:
        terminalreporter.section("seed spread (median and worst over seeds)")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    if Path(_CONFIG).name.startswith("edgepart-config-"):
        shutil.rmtree(_CONFIG, ignore_errors=True)
