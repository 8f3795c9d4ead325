"""Helpers of the end-to-end tests: package models, compute reference answers, watch processes,
and build raw wire messages (good and bad) by hand.

Everything here is plain functions; the fixtures that own resources (agents, LANs, sessions) are
in conftest.py.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import msgpack
import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
PY = sys.executable
ATOL = 1e-5
# In every model name packaged here, so the plan ids of this run are unique: another run of these
# tests (or anyone else's agents) on the same loopback or LAN never shares a plan with us.
RUN = secrets.token_hex(3)
# Very slow made-up devices: compute dominates the cost model, so `throughput` cuts every helper
# model into as many stages as there are devices, mid-network.
TINY_GFLOPS = [2e-3, 5e-4, 1e-3, 3e-3]
REAL_GFLOPS = [20, 10, 30, 15]


# -- packaging -------------------------------------------------------------------------------------

def write_cluster(path: Path, names: Sequence[str], gflops: Sequence[float], bandwidth_mbps: float = 1000) -> Path:
    doc = {"devices": [{"name": n, "gflops": g, "memory_mb": 1024} for n, g in zip(names, gflops)],
           "links": {"default": {"bandwidth_mbps": bandwidth_mbps, "latency_ms": 0.1}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def package_model(model: onnx.ModelProto | Path, out: Path, n: int, *, real: bool = False,
                  shapes: Mapping[str, tuple[int, ...]] | None = None, names: Sequence[str] | None = None,
                  gflops: Sequence[float] | None = None, tag: str = "", objective: str = "throughput"):
    """Plan and package `model` for n devices (dev0..) under out/dist; returns the Packaged result."""
    from edgepart.packager.strategies.pipeline.compiler import package, prepare

    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, onnx.ModelProto):
        path = out / f"{model.graph.name}.onnx"
        onnx.save(model, str(path))
    else:
        path = Path(model)
    names = list(names or [f"dev{i}" for i in range(n)])
    gflops = list(gflops or (REAL_GFLOPS if real else TINY_GFLOPS)[:n])
    prep = prepare(path, write_cluster(out / "cluster.yaml", names, gflops), objective, dict(shapes or {}) or None)
    assert len(prep.pipeline.stages) == n, f"planned {len(prep.pipeline.stages)} stages, wanted {n}"
    return package(prep.model, prep.graph, prep.cluster, prep.pipeline, out / "dist",
                   model_name=f"{path.stem}-{RUN}{tag}")


def package_with_cuts(model: onnx.ModelProto, out: Path, cuts: tuple[int, ...], tag: str = ""):
    """Package `model` cut after exactly these node positions, stage i on dev<i>."""
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.cost import CostModel
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.compiler import package
    from edgepart.packager.strategies.pipeline.planner import evaluate

    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / f"{model.graph.name}.onnx"))
    names = tuple(f"dev{i}" for i in range(len(cuts) + 1))
    graph = analyse(model)
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": 1} for d in names]})
    pp = evaluate(CostModel(graph, cluster), tuple(cuts), names)
    return package(model, graph, cluster, pp, out / "dist", model_name=f"{model.graph.name}-{RUN}{tag}")


def model_file(packaged_dir: Path) -> Path:
    """The .onnx next to a dist/ written by package_model (helper models are saved there)."""
    return next(p for p in packaged_dir.parent.glob("*.onnx"))


# -- answers -----------------------------------------------------------------------------------------

def reference(model_path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What one plain onnxruntime session computes for `feeds`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    try:
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feeds))))
    finally:
        del sess


def assert_same(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], what: str = "") -> float:
    """Same output names, shapes and dtypes, values within ATOL; returns the largest difference."""
    assert set(got) == set(want), f"{what}: outputs {sorted(got)}, expected {sorted(want)}"
    worst = 0.0
    for k, w in want.items():
        g = np.asarray(got[k])
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {k} is {g.dtype}{list(g.shape)}, expected {w.dtype}{list(w.shape)}"
        if w.size:
            d = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            assert d <= ATOL, f"{what}: {k} differs from onnxruntime by {d:.3g} (> {ATOL})"
            worst = max(worst, d)
    return worst


def seeded_feeds(plan, seed: int, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    from edgepart.inputs import random_inputs

    return random_inputs(plan.inputs, shapes, seed=seed)


# -- a model whose output tells which input it came from -------------------------------------------

ENCODER_WIDTH = 1024  # 4 KiB tensors


def encoder_model(width: int = ENCODER_WIDTH, heavy: int = 0, through_first: bool = False) -> onnx.ModelProto:
    """y = 1990 - 3x, computed in exact float32 steps, with x itself crossing every cut.

    For the integers `encoder_input` makes every step stays an integer below 2^24 in magnitude, so
    is exact: an answer equals `encoded(x)` bit for bit and names its request (x[0] = 1024 i).
    `heavy` > 0 puts that many multiplications by the identity matrix (exact, and width^2 MACs
    each) after node 3: a slow stage for the cut there. `through_first`: the last node reads a copy
    of x made by a first Identity node, so the caller sends x to the first stage only (every node
    position one later)."""
    c = lambda name, v: numpy_helper.from_array(np.full((1, width), v, dtype=np.float32), name)
    inits = [c("c3", 3), c("c2", 2), c("c1", 1), c("c1000", 1000), c("c0", 0)]
    n = helper.make_node
    x = "x_copy" if through_first else "x"
    nodes = [n("Identity", ["x"], [x], name="copy_x")] if through_first else []
    nodes += [
        n("Add", [x, "c3"], ["a1"], name="add3"),
        n("Mul", ["a1", "c2"], ["m1"], name="mul2"),
        n("Sub", ["m1", "c1"], ["s1"], name="sub1"),
    ]
    if heavy:
        inits.append(numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye"))
        for k in range(heavy):
            nodes.append(n("MatMul", [nodes[-1].output[0], "eye"], [f"e{k}"], name=f"identity{k}"))
    nodes += [
        n("Neg", [nodes[-1].output[0]], ["n1"], name="neg"),
        n("Add", ["n1", "c1000"], ["a2"], name="add1000"),
        n("Mul", ["a2", "c2"], ["m2"], name="mul2b"),
        n("Add", ["m2", "c0"], ["m3"], name="add0"),
        n("Add", ["m3", x], ["y"], name="add_x"),
    ]
    g = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="edgepart-e2e")
    onnx.checker.check_model(m, full_check=True)
    return m


def encoder_input(i: int, width: int = ENCODER_WIDTH) -> np.ndarray:
    assert 0 <= i < 3000, "beyond this the model's intermediates leave float32's exact integers"
    return ((np.arange(width, dtype=np.float32) % 1024) * 7 + np.float32(i * 1024))[None, :]


def encoded(x: np.ndarray) -> np.ndarray:
    return (np.float32(1990) - np.float32(3) * x).astype(np.float32)


def encoder_owner(y: np.ndarray) -> int:
    """Which request an encoder answer belongs to."""
    return int(round((1990 - float(np.asarray(y).ravel()[0])) / 3 / 1024))


# -- processes ----------------------------------------------------------------------------------------

def edgepart_cli(*args: object, timeout_s: float = 60, host=None) -> subprocess.CompletedProcess:
    """Run `python -m edgepart ARGS` to completion (inside `host`'s namespace when given)."""
    argv = [PY, "-m", "edgepart", *map(str, args)]
    if host is not None:
        return host.run(argv, timeout_s=timeout_s, capture_output=True, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The next line `proc` prints on stdout, waiting at most timeout_s (empty at end of output)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"{proc.args} printed nothing within {timeout_s} s"
    return proc.stdout.readline().strip()


def ns_client(host, *, dist: Path, interface: str, inputs: Sequence[Path] = (), outputs: Sequence[Path] = (),
              peers: Sequence[str] = (), wait_go: bool = False, timeout_s: float = 20,
              discover_timeout_s: float = 10, insecure: bool = False) -> subprocess.Popen:
    """Start tests/e2e/ns_client.py inside `host`: an InferenceSession on the LAN, outputs to .npz."""
    args = {"dist": str(dist), "interface": interface, "peers": list(peers), "inputs": list(map(str, inputs)),
            "outputs": list(map(str, outputs)), "wait_go": wait_go, "timeout_s": timeout_s,
            "discover_timeout_s": discover_timeout_s, "insecure": insecure}
    return host.popen([PY, str(HERE / "ns_client.py"), json.dumps(args)], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float) -> dict:
    """Wait for an ns_client and return its one JSON line."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise AssertionError(f"the client in the namespace did not finish within {timeout_s} s")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"the client printed no result (exit {proc.returncode}):\n{out}\n{err}"
    return json.loads(lines[-1])


def wait_until(cond, timeout_s: float, interval_s: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(interval_s)


def first_success(fn, within_s: float, what: str):
    """fn()'s value once it stops raising PeerError (a restarted agent coming back), retried every
    0.1 s for at most `within_s`; AssertionError with the last error if it never does."""
    from edgepart.errors import PeerError

    end, last = time.monotonic() + within_s, None
    while time.monotonic() < end:
        try:
            return fn()
        except PeerError as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"{what} within {within_s:g} s: {last}")


def agent_output(procs, device: str | None = None) -> str:
    agents = [procs.agents[device]] if device else list(procs.agents.values())
    return "\n".join(f"[{a.device}] {ln}" for a in agents for ln in list(a.lines))


# -- raw wire messages ---------------------------------------------------------------------------------

def keyed_dealer(ctx, dist: Path, device: str):
    """A raw DEALER with the app's key from `dist` and `device`'s key pinned (not yet connected):
    what an authenticated client sends reaches the agent's request handling."""
    import zmq

    from edgepart.agent.net.link import secure_client
    from edgepart.session import session_credentials

    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    assert secure_client(s, session_credentials(dist)[1], device)
    return s


def send_all(sock, frames: list, timeout_s: float = 2.0) -> bool:
    """Send `frames` without blocking for more than `timeout_s`; False when the peer would not take them."""
    import zmq

    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
        return True
    except zmq.Again:
        if sock.poll(int(timeout_s * 1e3), zmq.POLLOUT):
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        return False


def header(**fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def tensor_message(plan_id: str, sender: str, tensors: Sequence[tuple[str, np.ndarray]], *, rid: int = 1,
                   client: bytes = b"nobody", ttl: float | None = 5000.0, **over) -> list[bytes]:
    """A well-formed tensor message (fields can be overridden or, with value None, left out)."""
    from edgepart.wire import PROTOCOL_VERSION

    d = {"v": PROTOCOL_VERSION, "k": "tensor", "p": plan_id, "s": sender, "r": rid, "c": client, "ttl": ttl,
         "ts": [[name, a.dtype.name, list(a.shape), "dense", {}] for name, a in tensors]}
    d.update(over)
    d = {k: v for k, v in d.items() if v is not None}
    return [header(**d), *[np.ascontiguousarray(a).tobytes() for _, a in tensors]]
