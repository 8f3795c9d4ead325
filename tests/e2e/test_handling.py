"""packager/calibrate.py's measure_handling through real `edgepart run` agents: what an agent's CPU
spends per request beside its step's op, the figures the allocator and simulator of plans with sources
take as step_ms and handling_mbps (docs/priority.md, "Costs per request"). Figures checked for sense."""

from __future__ import annotations

import os
import sys

import pytest

from edgepart.packager.calibrate import Handling, measure_handling

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("lanes", [False, True], ids=["plain", "lanes"])
def test_an_agents_cpu_per_request_grows_with_the_bytes_it_handles(lanes):
    """Plain: a two-step chain. Lanes: a plan with one source, its head on A and its tail on B, which the
    allocator itself placed (the agents keep queues, report them and choose the helper)."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))[:2]  # the cores this run may use (one under taskset -c 0)
    h = measure_handling(cpus=cpus, big_bytes=1 << 20, runs=300, blocks=3, lanes=lanes)
    assert isinstance(h, Handling) and h.runs == 300 and h.big_bytes == 1 << 20
    per = dict(h.per_request)
    assert set(per) == {"a-small", "a-big", "b-small", "b-big"}
    # a MiB in and a MiB out, through CURVE and TCP on one side, costs each agent more than a KiB does
    assert per["a-big"] > per["a-small"] > 0 and per["b-big"] > per["b-small"] > 0
    assert 0 < h.request_ms < 50
    assert 100 < h.mbps < 1e6  # Mbit/s of message bytes per second of CPU: somewhere between a Pi and a desktop
