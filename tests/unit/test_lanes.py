"""Plans with sources (docs/priority.md, "Plans with sources"): `package(sources=...)` compiles each
source's allocation into one plan whose steps, routes and alternatives are tagged by source; each
source's view of the plan answers as the model does, through any of its helpers; the plan round trips
at schema version 3; agents and sessions of this edgepart refuse such a plan by name; the `priority`
rule picks among alternatives by cost, the queue ahead and the sender's own claims."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgepart.bundle import load_bundle
from edgepart.errors import BundleError
from edgepart.plan import CALLER, Alternatives, Plan
from edgepart.agent.net.choose import Chooser, ahead_ms

pytestmark = [pytest.mark.timeout(600), pytest.mark.models]

CLUSTER = """\
devices:
  - {name: door-cam, gflops: 10}
  - {name: yard-cam, gflops: 10}
  - {name: jetson, gflops: 40}
  - {name: pi, gflops: 10}
links:
  default: {bandwidth_mbps: 1000, latency_ms: 0.5}
"""
SOURCES = """\
sources:
  - {name: door, device: door-cam, priority: 10, rate_hz: 25, deadline_ms: 100}
  - {name: yard, device: yard-cam, priority: 1, rate_hz: 25}
"""


@pytest.fixture(scope="module")
def packaged(efficientnet_lite0_path, tmp_path_factory):
    import edgepart.packager as p

    d = tmp_path_factory.mktemp("lanes")
    (d / "cluster.yaml").write_text(CLUSTER)
    (d / "sources.yaml").write_text(SOURCES)
    out = {}
    for mode in ("priority", "blind", "local"):
        out[mode] = p.package(efficientnet_lite0_path, d / "cluster.yaml", out=d / f"dist-{mode}",
                              input_shapes={"input": (1, 3, 224, 224)}, sources=d / "sources.yaml",
                              schedule=mode, insecure=True)
    return efficientnet_lite0_path, out


def _chain(res, view: Plan, helper: str | None, feeds: dict) -> dict:
    """Run a source's view of the plan step by step in this process, its tail on `helper`."""
    tensors = dict(feeds)
    for st in view.steps:
        if helper is not None and "tail@" in st.name and st.device != helper:
            continue
        sess = ort.InferenceSession(str(res.bundle_dirs[st.device] / st.model_file), providers=["CPUExecutionProvider"])
        outs = sess.run([o.name for o in st.outputs], {i.name: tensors[i.name] for i in st.inputs})
        tensors.update(zip([o.name for o in st.outputs], outs))
    return {o.name: tensors[o.name] for o in view.outputs}


def test_each_source_answers_as_the_model_through_every_helper(packaged):
    model, out = packaged
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    for mode, res in out.items():
        plan = res.plan
        assert plan.written_version == 3 and set(plan.lanes.names) == {"door", "yard"}
        assert plan.lanes.rule == ("priority" if mode == "priority" else "fifo")
        for ln in plan.lanes.lanes:
            view = plan.lane(ln.source)
            # the caller feeds only the source's own device, which runs the first layers
            assert {r.dst for r in view.routes_from(CALLER)} == {ln.device}
            groups = view.alternatives
            helpers = list(groups[0].devices) if groups else [None]
            if mode == "local":
                assert not groups and [s.device for s in view.steps] == [ln.device]
            else:
                assert groups and groups[0].rule == "priority" and len(groups[0].costs_ms) == len(groups[0].devices)
            for h in helpers:
                got = _chain(res, view, h, {"input": x})["logits"]
                assert np.abs(got - want).max() <= 1e-4, (mode, ln.source, h)


def test_the_plan_round_trips_and_is_refused_where_it_cannot_run_yet(packaged):
    from edgepart.agent.device.core import AgentCore

    _, out = packaged
    res = out["priority"]
    plan = res.plan
    import dataclasses

    back = Plan.from_dict(plan.to_dict())
    assert back == dataclasses.replace(plan, schema_version=3) and back.plan_id == plan.plan_id
    assert load_bundle(res.bundle_dirs["jetson"]).plan.plan_id == plan.plan_id
    with pytest.raises(BundleError, match="cannot run a plan with sources yet"):
        AgentCore(load_bundle(res.bundle_dirs["jetson"]), insecure=True)
    with pytest.raises(BundleError, match="no source 'gate'"):
        plan.lane("gate")
    # a version-2 reader's view of it: sources with an older schema version are an edited manifest
    d = plan.to_dict()
    d["schema_version"] = 2
    with pytest.raises(BundleError, match="sources but schema version 2"):
        Plan.from_dict(d)


def test_a_plan_without_sources_writes_none_of_it(packaged):
    _, out = packaged
    d = out["priority"].plan.to_dict()
    assert "lanes" in d and all("source" in s for s in d["steps"])
    import dataclasses

    plain = dataclasses.replace(out["local"].plan, steps=tuple(dataclasses.replace(s, source="") for s in out["local"].plan.steps),
                                routes=tuple(dataclasses.replace(r, source="") for r in out["local"].plan.routes),
                                lanes=type(out["local"].plan.lanes)())
    pd = plain.to_dict()
    assert "lanes" not in pd and pd["schema_version"] == 1
    assert not any("source" in s for s in pd["steps"]) and not any("source" in r for r in pd["routes"])


def _plan_with_group(costs: tuple[float, ...]) -> Plan:
    from edgepart.plan import DeviceSpec, TensorSpec

    t = TensorSpec("x", "float32", (1,))
    return Plan("pipeline", "m", "0" * 64, (t,), (t,), tuple(DeviceSpec(n) for n in ("a", "b", "c")), (), (),
                alternatives=(Alternatives(("b", "c"), "priority", "", costs),))


def test_the_priority_rule_weighs_cost_queue_and_claims():
    said: dict[str, tuple] = {}
    ch = Chooser(_plan_with_group((10.0, 12.0)), figures=lambda d: said.get(d))
    assert ch.pick(1, ["b", "c"], (1.0, 0.0)) == ["b"]  # cheaper
    # the first pick is claimed on b (10 ms) until b reports after it was sent: the next goes to c
    assert ch.pick(2, ["b", "c"], (1.0, 0.0)) == ["c"]
    # b reports an empty queue, answering a request sent after both picks: its claim is gone
    import time

    now = time.monotonic()
    said["b"] = ((), now + 1.0, now)
    said["c"] = ((), now + 1.0, now)
    assert ch.pick(3, ["b", "c"], (1.0, 0.0)) == ["b"]
    # a long queue on b of low-priority work: an urgent task (weight 10) overtakes it, a weight-1 one does not
    said["b"] = (((1.0, 0.0, 50.0),), now + 2.0, now)
    assert ch.pick(4, ["b", "c"], (10.0, 0.0)) == ["b"]
    assert ch.pick(5, ["b", "c"], (1.0, 0.0)) == ["c"]


def test_work_ahead_follows_the_queue_order():
    q = ((10.0, 0.0, 5.0), (1.0, 500.0, 7.0), (1.0, 0.0, 11.0))
    assert ahead_ms(q, 0.0, 1.0, 0.0, None) == 23.0  # FIFO: all of it
    # weight 10, just made: behind the other weight-10 task (earlier), ahead of the weight-1 ones
    # unless they waited 900 ms more than it (aging 100 ms per unit of weight)
    assert ahead_ms(q, 0.0, 10.0, 0.0, 100.0) == 5.0
    assert ahead_ms(q, 500.0, 10.0, 0.0, 100.0) == 12.0  # the old weight-1 task has aged past it
