"""Unit tests: pure planners on tiny graphs, real onnxruntime runs on models built in code."""

import sys
from pathlib import Path

# `from graphs import ...` in this folder and in tests/cli, whatever pytest's rootdir and import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes seconds (builds a wheel, makes a venv); still part of the suite")
