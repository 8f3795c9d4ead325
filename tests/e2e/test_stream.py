"""Streaming: 1,000 requests pipelined with `submit` through 3 agent processes, each answered
exactly once, in order, with its own answer (none lost, duplicated or swapped).

The model (e2e_helpers.encoder_model) computes y = 1990 - 3x exactly, so each answer names its
request; its input is read by the first node and by the last, so every request is two messages
from the caller — one to dev0, one straight to dev2 — that must meet again at dev2; and its middle
stage (8 multiplications by the identity) is the slowest, as on any cluster of unequal devices.

The caller runs in a process of its own (stream_client.py): should it die (a libzmq assertion
aborts a process), the test says so instead of taking pytest down with it."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from e2e_helpers import HERE, PY, agent_output, encoder_model, package_with_cuts

pytestmark = pytest.mark.timeout(120)

N = 1000
TIMEOUT_S = 20.0  # per request; 1,000 of them take about a second when all is well
WIDTH = 1024  # 4 KiB tensors
HEAVY = 8  # identity MatMuls in the middle stage


@pytest.fixture
def encoder_cluster(tmp_path, agents):
    res = package_with_cuts(encoder_model(WIDTH, HEAVY), tmp_path, (3, 3 + HEAVY))
    assert sorted((r.tensor, r.dst) for r in res.plan.routes if r.src == "@caller") == [("x", "dev0"), ("x", "dev2")]
    return res.out_dir, agents(res.out_dir)


def stream(dist, procs, window: int | None) -> float:
    """Requests 0..N-1 through the cluster, at most `window` in flight (None: all at once); every
    one answered once, with its own answer, in order. Returns the seconds the stream took."""
    args = {"dist": str(dist), "interface": "127.0.0.1", "n": N, "window": window, "timeout_s": TIMEOUT_S,
            "width": WIDTH}
    r = subprocess.run([PY, str(HERE / "stream_client.py"), json.dumps(args)], capture_output=True, text=True,
                       timeout=TIMEOUT_S + 60)
    said = "\nthe agents said:\n" + agent_output(procs)[-3000:]
    if r.returncode < 0:
        raise AssertionError(f"the client process died of {signal.Signals(-r.returncode).name}:\n{r.stderr[-3000:]}{said}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + said
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n_failed"] == 0, f"{res['n_failed']} of {N} requests failed, first: {res['failed']}{said}"
    assert res["n_wrong"] == 0, f"{res['n_wrong']} requests got another request's answer (index, owner): {res['wrong']}"
    order = res["order"]
    assert len(order) == N and len(set(order)) == N, f"{len(order)} completions for {N} requests ({len(set(order))} distinct)"
    out_of_order = [(k, i) for k, i in enumerate(order) if i != k]
    assert not out_of_order, f"answers came out of order, first (position, request): {out_of_order[:10]}"
    assert res["after"] == ["ok"] * 3, f"after the stream: {res['after']}{said}"
    return res["took_s"]


def test_1000_requests_submitted_at_once(encoder_cluster):
    """The issue's own usage: `futures = [sess.submit(...) for x in frames]`, all 1,000 in flight."""
    took_s = stream(*encoder_cluster, window=None)
    print(f"\n{N} requests submitted at once: {took_s:.2f} s ({N / took_s:.0f}/s)")


def test_1000_requests_with_a_window_of_100(encoder_cluster):
    """Pipelined, at most 100 in flight: each answered once, in order, with its own answer."""
    took_s = stream(*encoder_cluster, window=100)
    print(f"\n{N} requests, 100 in flight: {took_s:.2f} s ({N / took_s:.0f}/s)")
