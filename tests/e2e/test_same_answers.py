"""Same answers: a model cut across 2 and 3 `edgepart run` processes computes what one onnxruntime
session computes (max abs diff <= 1e-5) — on loopback, across 3 network namespaces, through
`edgepart infer`, and with the first stage embedded in the caller's process (`edgepart.Agent`)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import edgepart
from edgepart.inputs import load_npz, save_npz

import graphs
from e2e_helpers import (ATOL, PY, assert_same, edgepart_cli, finish, model_file, ns_client, reference,
                         seeded_feeds)

pytestmark = pytest.mark.timeout(120)

# (model builder, shapes to plan at, extra input shapes to run at as well)
HELPER = {
    "residual": (graphs.residual, None, []),
    "two_in_two_out": (graphs.two_in_two_out, None, []),
    "shared_weight": (graphs.shared_weight, None, []),
    "branch": (graphs.branch, None, []),
    "symbolic_batch": (graphs.symbolic_batch, {"x": (1, 4, 6, 6)}, [{"x": (3, 4, 6, 6)}]),
    "transformer": (graphs.transformer, None, []),
}


def run_and_compare(sess, model_path, feeds_list, what):
    """Every request pipelined (submit), then each answer compared with onnxruntime's."""
    futures = [sess.submit(f) for f in feeds_list]
    worst = 0.0
    for i, (fut, feeds) in enumerate(zip(futures, feeds_list)):
        worst = max(worst, assert_same(fut.result(60), reference(model_path, feeds), f"{what}, request {i}"))
    return worst


@pytest.fixture(scope="class")
def helper_fleet(packaged, class_agents, class_sessions):
    """Every helper model packaged for 2 and for 3 devices; all 30 agents start at once (on 2 cores
    much faster than one cluster after the other), one session per plan; stopped after the class."""
    clusters = {}
    for name, (make, plan_shapes, _) in HELPER.items():
        for n in (2, 3):
            res = packaged(make(), n, shapes=plan_shapes)
            assert {s.device for s in res.plan.steps} == {f"dev{i}" for i in range(n)}, "every process must compute"
            clusters[name, n] = res
    class_agents.many([res.out_dir for res in clusters.values()])
    opened = class_sessions.many([res.out_dir for res in clusters.values()], discover_timeout_s=30)
    return {key: (res, sess) for (key, res), sess in zip(clusters.items(), opened)}


class TestHelperModels:
    """The onnx.helper models of tests/unit/graphs.py through 2 and 3 agent processes."""

    @pytest.mark.parametrize("n", [2, 3])
    @pytest.mark.parametrize("name", sorted(HELPER))
    def test_same_as_onnxruntime(self, name, n, helper_fleet):
        res, sess = helper_fleet[name, n]
        _, _, other_shapes = HELPER[name]
        feeds = [seeded_feeds(res.plan, seed) for seed in range(4)]
        feeds += [seeded_feeds(res.plan, 10 + k, s) for k, s in enumerate(other_shapes)]
        run_and_compare(sess, model_file(res.out_dir), feeds, f"{name} on {n} processes")
        # run() answers like onnxruntime's: a list in output order, or only the outputs asked for
        want = reference(model_file(res.out_dir), feeds[0])
        got = sess.run(None, feeds[0])
        assert [g.shape for g in got] == [want[o.name].shape for o in res.plan.outputs]
        last = res.plan.outputs[-1].name
        (only,) = sess.run([last], feeds[0])
        assert np.max(np.abs(only - want[last])) <= ATOL


REAL = {
    # fixture of the zoo model, inputs to plan at, inputs to run (other batch sizes, lengths, image sizes too)
    "efficientnet_lite0": (
        "efficientnet_lite0_path",
        lambda zoo: zoo.imagenet_inputs(1),
        lambda zoo: [zoo.imagenet_inputs(1), {"input": zoo.imagenet_inputs(3)["input"][1:]}],
    ),
    "minilm": (
        "minilm_path",
        lambda zoo: zoo.sentence_inputs(zoo.english_sentences(2)),
        lambda zoo: [zoo.sentence_inputs(zoo.english_sentences(2)), zoo.sentence_inputs(zoo.english_sentences(5)[2:])],
    ),
    "ppocr_det": (
        "ppocr_det_path",
        lambda zoo: zoo.ocr_inputs((320, 320)),
        lambda zoo: [zoo.ocr_inputs((320, 320)), zoo.ocr_inputs((256, 384))],
    ),
}


@pytest.fixture(scope="class")
def real_fleet(packaged, request, class_agents, class_sessions):
    """Each reference model packaged for 2 and for 3 devices, all agents started at once."""
    zoo = pytest.importorskip("edgepart.testing.zoo")
    clusters = {}
    for name, (fixture, plan_feeds, _) in REAL.items():
        model_path = request.getfixturevalue(fixture)  # skips without the models extra
        plan_shapes = {k: tuple(v.shape) for k, v in plan_feeds(zoo).items()}
        for n in (2, 3):
            res = packaged(model_path, n, real=True, shapes=plan_shapes)
            clusters[name, n] = (model_path, res)
    class_agents.many([res.out_dir for _, res in clusters.values()])
    opened = class_sessions.many([res.out_dir for _, res in clusters.values()], timeout_s=30, discover_timeout_s=30)
    return {key: (path, res, sess) for (key, (path, res)), sess in zip(clusters.items(), opened)}


@pytest.mark.models
class TestReferenceModels:
    """EfficientNet-Lite0, MiniLM and the PP-OCRv4 detector, each on 2 and on 3 processes, cut
    mid-network (objective `throughput`), all agents started at once."""

    @pytest.mark.parametrize("n", [2, 3])
    @pytest.mark.parametrize("name", sorted(REAL))
    def test_same_as_onnxruntime(self, name, n, real_fleet):
        zoo = pytest.importorskip("edgepart.testing.zoo")
        model_path, res, sess = real_fleet[name, n]
        crossing = [i.name for s in res.plan.steps[1:] for i in s.inputs]
        assert crossing, "a mid-network cut should carry activations between processes"
        run_and_compare(sess, model_path, REAL[name][2](zoo), f"{name} on {n} processes")


def test_edgepart_infer_on_loopback(packaged, tmp_path, agents):
    """`edgepart infer DIST --inputs in.npz --output out.npz` writes every output by name."""
    res = packaged(graphs.two_in_two_out(), 3)
    agents(res.out_dir)
    feeds = seeded_feeds(res.plan, 7)
    save_npz(tmp_path / "in.npz", feeds)
    # DIST may be the dist/ folder or any one bundle of the plan; both at once
    runs = []
    for i, dist in enumerate([res.out_dir, res.out_dir / "dev2"]):
        out = tmp_path / f"out{i}.npz"
        argv = [PY, "-m", "edgepart", "infer", str(dist), "--inputs", str(tmp_path / "in.npz"), "--output", str(out),
                "--interface", "127.0.0.1", "--timeout-s", "10", "--discover-timeout-s", "10"]
        runs.append((dist, out, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    done = []
    for dist, out, proc in runs:  # wait for every one before any assertion: none may outlive the test
        try:
            done.append((dist, out, proc, *proc.communicate(timeout=60)))
        except subprocess.TimeoutExpired:
            proc.kill()
            done.append((dist, out, proc, *proc.communicate()))
    for dist, out, proc, stdout, stderr in done:
        assert proc.returncode == 0, stdout + stderr
        assert "Traceback" not in stderr and "2 output(s) written to" in " ".join(stderr.split()), stderr
        assert_same(load_npz(out), reference(model_file(res.out_dir), feeds), f"edgepart infer {dist.name}")


def test_embedded_first_stage(packaged, agents, sessions):
    """The caller's process embeds the first stage's agent (edgepart.Agent); the rest are processes."""
    res = packaged(graphs.residual(), 3)
    first = res.plan.steps[0].device
    others = [d for d in res.plan.device_names() if d != first]
    procs = agents(res.out_dir, devices=others)
    assert sorted(procs.agents) == sorted(others)
    with edgepart.Agent(res.out_dir / first, interface="127.0.0.1", threads=1) as agent:
        assert agent.endpoint.startswith("tcp://127.0.0.1:")
        assert agent.wait_ready(15), f"the embedded {first} did not link to its peers"
        sess = sessions(res.out_dir)
        feeds = [seeded_feeds(res.plan, s) for s in range(6)]
        run_and_compare(sess, model_file(res.out_dir), feeds, "embedded first stage")
        (y,) = sess.run(["y"], feeds[0])
        assert np.max(np.abs(y - reference(model_file(res.out_dir), feeds[0])["y"])) <= ATOL
        # run() computed the first stage in this thread and sent it from here; submit() went through
        # the agent's own thread: both answered the same
        assert agent.core.direct.runs >= 1
        assert agent.core.executor.completed >= 1
        sessions.close()
    # and it stops cleanly: the leak check after this test covers its threads and sockets


@pytest.mark.models
def test_across_three_namespaces(packaged, request, tmp_path, lan, agents):
    """The three reference models, each on 3 emulated hosts (one agent per host and plan, all nine
    agents at once); the callers on a 4th host, since the root namespace cannot reach the LAN."""
    zoo = pytest.importorskip("edgepart.testing.zoo")
    net = lan(4)
    caller = net.hosts[3]
    plans, clients = {}, {}
    for name, (fixture, plan_feeds, run_feeds) in REAL.items():
        model_path = request.getfixturevalue(fixture)
        shapes = {k: tuple(v.shape) for k, v in plan_feeds(zoo).items()}
        res = packaged(model_path, 3, real=True, shapes=shapes)
        feeds = run_feeds(zoo)
        ins = [res.out_dir.parent / f"in{i}.npz" for i in range(len(feeds))]
        for f, path in zip(feeds, ins):
            save_npz(path, f)
        plans[name] = (model_path, res, feeds, ins, [p.with_name(f"out{i}.npz") for i, p in enumerate(ins)])
    procs = agents.many([res.out_dir for _, res, _, _, _ in plans.values()],
                        hosts=dict(zip(["dev0", "dev1", "dev2"], net.hosts[:3])))
    for p in procs:
        assert all(ep.startswith(f"tcp://{net.hosts[int(d[3:])].ip}:") for d, ep in p.endpoints.items()), p.endpoints
    for name, (_, res, _, ins, outs) in plans.items():  # the three callers run at the same time
        clients[name] = ns_client(caller, dist=res.out_dir, interface=caller.ip, inputs=ins, outputs=outs, timeout_s=30)
    results = {name: finish(c, 90) for name, c in clients.items()}
    for name, (model_path, res, feeds, _, outs) in plans.items():
        assert "error" not in results[name], (name, results[name])
        for i, f in enumerate(feeds):
            assert_same(load_npz(outs[i]), reference(model_path, f), f"{name} across namespaces, request {i}")

    # and `edgepart infer` from the same host
    model_path, res, feeds, ins, _ = plans["efficientnet_lite0"]
    r = edgepart_cli("infer", res.out_dir, "--inputs", ins[0], "--output", tmp_path / "cli.npz",
                     "--interface", caller.ip, host=caller)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same(load_npz(tmp_path / "cli.npz"), reference(model_path, feeds[0]), "edgepart infer in a namespace")
