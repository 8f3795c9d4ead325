"""Ready means ready, and threads follow what a device's process may use (docs/agents.md, "Ready"
and "Threads").

A session sends nothing until every device of the plan says it is linked to every peer it sends
to, so a request sent the moment the agents start never fails because the mesh is still forming.
`edgepart run` with default flags sizes its one onnxruntime pool from its CPU affinity and says
so in `edgepart discover`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import edgepart
from edgepart.testing.emulate import AgentProcesses

import graphs
from e2e_helpers import PY, RUN, assert_same, reference, seeded_feeds, write_cluster

pytestmark = pytest.mark.timeout(600)

ROUNDS = 50


def _channel(tmp_path, n: int, tag: str):
    from edgepart.packager.strategies.channel.compiler import package_channel
    from edgepart.packager.cluster import load_cluster
    from edgepart.packager.model.graph import analyse

    import onnx

    model = graphs.residual()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    cluster = load_cluster(write_cluster(tmp_path / "cluster.yaml", [f"dev{i}" for i in range(n)], [1.0] * n))
    res = package_channel(model, analyse(model), cluster, tmp_path / "dist", None, model_name=f"ready-{tag}-{RUN}")
    assert sum(1 for r in res.plan.routes if "@caller" not in (r.src, r.dst)) >= n, "devices must talk to each other"
    return path, res


def test_a_request_sent_as_the_agents_start_is_answered_50_times(tmp_path):
    """4 `edgepart run` of a channel plan started, a session opened and a request sent at once,
    without waiting for anything: every one of 50 rounds answered, and exactly."""
    path, res = _channel(tmp_path, 4, "start")
    feeds = seeded_feeds(res.plan, 0)
    want = reference(path, feeds)
    answered, took = 0, []
    for i in range(ROUNDS):
        procs = AgentProcesses(res.out_dir, interface="127.0.0.1")
        try:
            t0 = time.monotonic()
            for a in procs.agents.values():
                a.start()  # no wait: the session is opened while they start
            with edgepart.InferenceSession(res.out_dir, interface="127.0.0.1", timeout_s=20,
                                           discover_timeout_s=60) as sess:
                got = sess.run(None, feeds)
            took.append(time.monotonic() - t0)
            assert_same({o.name: g for o, g in zip(res.plan.outputs, got)}, want, f"round {i}")
            answered += 1
        finally:
            procs.stop()
    print(f"\nrequests sent as 4 agents started: {answered}/{ROUNDS} answered, start to answer "
          f"median {np.median(took):.2f} s, slowest {max(took):.2f} s")
    assert answered == ROUNDS


def test_default_threads_follow_the_affinity(tmp_path):
    """`edgepart run` with default flags pinned to one core runs 1 thread, says so in `edgepart
    discover`, and its steps share one pool: pinned to two cores it has one thread more, not one
    more per step."""
    _, res = _channel(tmp_path, 2, "threads")
    steps = len(res.plan.steps_of("dev0"))
    assert steps >= 3, "the point is a device with several steps"
    counts = {}
    for cpus in ("0", "0,1"):
        procs = AgentProcesses(res.out_dir, interface="127.0.0.1", threads=0, cpus={"dev0": cpus, "dev1": cpus})
        try:
            procs.start(60)
            procs.wait_ready(30)
            line = next(x for x in procs.agents["dev0"].lines if x.startswith("edgepart-agent device="))
            assert f"threads={len(cpus.split(','))} " in line and " runtime=onnx providers=" in line, line
            out = subprocess.run([PY, "-m", "edgepart", "discover", "--interface", "127.0.0.1", "--plan",
                                  res.plan.plan_id, "--dist", str(res.out_dir), "--json", "--wait-s", "4"], capture_output=True, text=True, timeout=60)
            rows = {r["role"]: r for r in json.loads(out.stdout)}
            assert rows["dev0"]["threads"] == len(cpus.split(",")), rows
            assert "affinity" in rows["dev0"]["threads_from"] and rows["dev0"]["ready"] is True, rows
            pid = procs.agents["dev0"].proc.pid
            counts[cpus] = len(list(Path(f"/proc/{pid}/task").iterdir()))
        finally:
            procs.stop()
    print(f"\nOS threads of an agent with {steps} steps: pinned to 1 core {counts['0']}, to 2 cores {counts['0,1']}")
    assert counts["0,1"] - counts["0"] <= 2, counts  # one shared pool thread (+1 of slack), not one per step
