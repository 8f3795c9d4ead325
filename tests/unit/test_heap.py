"""agent/device/heap.py: the agent process's malloc settings, each tried in a fresh process (they are
process-wide)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from edgepart.agent.device.heap import keep_large_buffers; print(keep_large_buffers())"


def run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    r = subprocess.run([sys.executable, "-c", CODE], env={**env, **env_extra}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_set_on_glibc():
    assert run({}) == "True"


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"}])
def test_a_setting_from_the_environment_wins(env):
    assert run(env) == "False"
