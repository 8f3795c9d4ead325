"""A plan with sources through real `edgepart run` processes (docs/priority.md, "Agents"): each
source's session sends its requests into its own lane and gets the model's answers, whichever helper
its device picks; a session must name a source the plan serves; a source whose deadline is out of
reach is refused at once with DeadlineRefused (a DeadlineExceeded) while the other source is served; the
sources' tails of the same nodes on one helper share one onnxruntime session.

One packaging (EfficientNet-Lite0, two cameras and two helpers on loopback) serves the module."""

from __future__ import annotations

import time

import numpy as np
import pytest

from e2e_helpers import RUN, assert_same, edgepart_cli, reference

pytestmark = [pytest.mark.timeout(300), pytest.mark.models]

# door's deadline is beyond reach of any request (0.01 ms): each is refused at its device at once
SOURCES = """\
sources:
  - {name: door, device: door-cam, priority: 10, rate_hz: 5}
  - {name: yard, device: yard-cam, priority: 1, rate_hz: 5}
  - {name: gate, device: yard-cam, priority: 5, rate_hz: 1, deadline_ms: 0.01}
"""


@pytest.fixture(scope="module")
def dist(efficientnet_lite0_path, cameras_cluster, tmp_path_factory):
    import edgepart.packager as p

    d = tmp_path_factory.mktemp("sources-agents")
    (d / "cluster.yaml").write_text(cameras_cluster)
    (d / "sources.yaml").write_text(SOURCES)
    res = p.package(efficientnet_lite0_path, d / "cluster.yaml", out=d / "dist", input_shapes={"input": (1, 3, 224, 224)},
                    sources=d / "sources.yaml", schedule="priority", model_name=f"sources-{RUN}")
    assert {ln.source for ln in res.plan.lanes.lanes} == {"door", "yard", "gate"}
    return efficientnet_lite0_path, d / "dist", res.plan


def test_tails_of_the_same_nodes_share_one_session(dist):
    from edgepart.agent.device.executor import Executor
    from edgepart.bundle import load_bundle

    _, out, plan = dist
    helper = plan.lane("door").alternatives[0].devices[0]
    ex = Executor(load_bundle(out / helper), lambda *a: None, lambda *a: None, threads=1)
    ex.load()
    tails = [st for st in ex.steps if ".tail@" in st.name]
    assert len(tails) == 3 and len({st.sha256 for st in tails}) == 1  # every source cut at the same node here
    assert len({id(ex.sessions[st.name]) for st in tails}) == 1


def test_each_source_gets_the_models_answers_and_a_late_one_is_refused_at_once(dist, agents, sessions):
    from edgepart.errors import BundleError, DeadlineRefused

    model, out, plan = dist
    agents(out)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(4)]
    want = [reference(model, {"input": x}) for x in xs]
    door, yard = sessions(out, source="door", timeout_s=30), sessions(out, source="yard", timeout_s=30)
    for s in (door, yard):
        assert_same({"logits": s.run(None, {"input": xs[0]})[0]}, want[0], "sync run")
        futs = [s.submit({"input": x}) for x in xs]
        for f, w in zip(futs, want):
            assert_same(f.result(60), w, "submit")
    # door's requests go to its helpers, picked per request by door's device among its alternatives;
    # sync runs from several threads at once are spread over them by its claims, and each caller
    # hears from whichever helper its request went to
    assert plan.lane("door").alternatives and plan.lane("yard").alternatives
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: door.run(None, {"input": xs[i % 4]}), range(12)))
    for i, g in enumerate(got):
        assert_same({"logits": g[0]}, want[i % 4], "sync runs at once")

    gate = sessions(out, source="gate", timeout_s=30)
    t0 = time.monotonic()
    with pytest.raises(DeadlineRefused, match="^request [0-9]+: A request of source .gate. was refused at once.*deadline of 0.01 ms"):
        gate.run(None, {"input": xs[0]})
    with pytest.raises(DeadlineRefused, match="^request [0-9]+: A request of source .gate. was refused at once"):
        gate.submit({"input": xs[1]}).result(30)
    assert time.monotonic() - t0 < 10, "a refusal comes at once, not at the request's timeout"
    # ... while the others are still served
    assert_same(yard.submit({"input": xs[2]}).result(60), want[2], "after a refusal")

    # the command line: `edgepart infer --source`, and without it one paragraph that says what to give
    np.savez(out.parent / "x.npz", input=xs[3])
    r = edgepart_cli("infer", out, "--inputs", out.parent / "x.npz", "--source", "yard", "-o", out.parent / "y.npz",
                     "--interface", "127.0.0.1", "--timeout-s", "30")
    assert r.returncode == 0, r.stderr
    assert_same(dict(np.load(out.parent / "y.npz")), want[3], "edgepart infer --source")
    r = edgepart_cli("infer", out, "--inputs", out.parent / "x.npz", "-o", out.parent / "y2.npz", "--interface", "127.0.0.1")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--source NAME" in " ".join(r.stderr.split())

    with pytest.raises(BundleError, match="serves the sources door, yard, gate: open the session with source=NAME"):
        sessions(out)
    with pytest.raises(BundleError, match="no source 'porch'"):
        sessions(out, source="porch")
