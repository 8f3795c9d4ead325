"""Big tensors on a slow link are not a dead peer (docs/agents.md, "Links and liveness").

A caller on a 20 Mbit/s link streams 4 MiB inputs to two replicas: each input keeps the link busy
for 1.7 s, and a heartbeat waits behind what its socket already holds. With a 2 s heartbeat timeout
the session declared a device that was still receiving "stopped answering" and failed its requests
(seen with RetinaFace at 1280x736 on 100 Mbit/s). Every request here must be answered, right.

A heartbeat's timer is reset by each whole frame the peer receives, not by the bytes of one on its
way, so one tensor that takes longer than the timeout to cross (16 MiB at the 10 Mbit/s each of two
flows gets: 13 s) once took its receiver's link down too (RetinaFace at 1280x736, 11 MB, at 20
Mbit/s): big tensors travel in parts (sdk/wire.py, "Parts").

Real parts: two `edgepart run` agents in network namespaces, the app in a third, a tc-shaped link.
"""

from __future__ import annotations

import json
import sys
import textwrap

import onnx
import pytest
from onnx import TensorProto, helper

pytestmark = pytest.mark.timeout(240)

N = 1 << 20  # floats per input: 4 MiB
RATE_MBIT = 20


def big_input_model(n: int = N) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1)], "big",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


CLIENT = textwrap.dedent("""
    import json, sys, numpy as np, edgepart
    dist, ip, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    x = [np.full((1, size), float(i), np.float32) for i in range(n)]
    out = {"ok": 0, "errors": [], "wrong": 0}
    with edgepart.InferenceSession(dist, interface=ip, timeout_s=120, discover_timeout_s=60) as s:
        futs = [s.submit({"x": xi}) for xi in x]  # all at once: the caller's link queues them
        for i, f in enumerate(futs):
            try:
                y = f.result(180)["y"]
                out["ok"] += 1
                out["wrong"] += int(abs(float(y.ravel()[0]) - i) > 1e-4)
            except Exception as e:
                out["errors"].append(f"{type(e).__name__}: {e}"[:300])
    print(json.dumps(out), flush=True)
""")


@pytest.mark.parametrize("size, n", [(N, 8), (4 * N, 4)], ids=["8 of 4 MiB", "4 of 16 MiB"])
def test_streamed_big_inputs_on_a_slow_link_are_all_answered(tmp_path, agents, lan, size, n):
    """8 of 4 MiB: 32 MiB, ~14 s on the link, many heartbeats queued behind them. 4 of 16 MiB: each
    input alone longer on the link than the heartbeat timeout (10 s)."""
    import edgepart.packager as p

    (tmp_path / "cluster.yaml").write_text(
        "devices:\n  - {name: dev0, gflops: 10, memory_mb: 512}\n  - {name: dev1, gflops: 10, memory_mb: 512}\n"
        f"links:\n  default: {{bandwidth_mbps: {RATE_MBIT}, latency_ms: 1}}\n")
    res = p.package(big_input_model(size), tmp_path / "cluster.yaml", out=tmp_path / "dist", strategy="replicas",
                    model_name=f"big-inputs-{tmp_path.name}")
    net = lan(3, rate_mbit=RATE_MBIT)
    agents(res.out_dir, interface=None, hosts={"dev0": net.hosts[0], "dev1": net.hosts[1]})
    (tmp_path / "client.py").write_text(CLIENT)
    r = net.hosts[2].run([sys.executable, str(tmp_path / "client.py"), str(res.out_dir), net.hosts[2].ip, str(n),
                          str(size)], timeout_s=200, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{n} inputs of {size * 4 >> 20} MiB over {RATE_MBIT} Mbit/s to 2 replicas: {got}")
    assert got["errors"] == [] and got["ok"] == n and got["wrong"] == 0, got
