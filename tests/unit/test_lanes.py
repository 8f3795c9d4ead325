"""Plans with sources (docs/priority.md, "Plans with sources"): `package(sources=...)` compiles each
source's allocation into one plan whose steps, routes and alternatives are tagged by source; each
source's view of the plan answers as the model does, through any of its helpers; the plan round trips
at schema version 3; a session must name one of its sources; a device serves its queue by priority
with aging (fifo for the baseline) and refuses a request without a known source; the source's device
refuses at once one whose deadline is out of reach; the `priority` rule picks among alternatives by
cost, the queue ahead and the sender's own claims."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from edgepart.bundle import load_bundle
from edgepart.errors import BundleError
from edgepart.plan import CALLER, Alternatives, Plan
from edgepart.agent.net.choose import Chooser, ahead_ms

pytestmark = [pytest.mark.timeout(600), pytest.mark.models]

SOURCES = """\
sources:
  - {name: door, device: door-cam, priority: 10, rate_hz: 25, deadline_ms: 100}
  - {name: yard, device: yard-cam, priority: 1, rate_hz: 25}
"""


@pytest.fixture(scope="module")
def packaged(efficientnet_lite0_path, cameras_cluster, tmp_path_factory):
    import edgepart.packager as p

    d = tmp_path_factory.mktemp("lanes")
    (d / "cluster.yaml").write_text(cameras_cluster)
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


def test_the_plan_round_trips_and_a_session_must_name_one_of_its_sources(packaged):
    from edgepart.agent.app.client import ClusterClient, source_view

    _, out = packaged
    res = out["priority"]
    plan = res.plan
    import dataclasses

    back = Plan.from_dict(plan.to_dict())
    assert back == dataclasses.replace(plan, schema_version=3) and back.plan_id == plan.plan_id
    assert load_bundle(res.bundle_dirs["jetson"]).plan.plan_id == plan.plan_id
    # a source's view keeps the plan's id: its session talks to the plan's agents
    assert plan.lane("door").plan_id == plan.plan_id and not plan.lane("door").lanes
    with pytest.raises(BundleError, match="serves the sources door, yard: open the session with source=NAME"):
        ClusterClient(plan)
    with pytest.raises(BundleError, match="no source 'gate'"):
        ClusterClient(plan, source="gate")
    plain = plan.lane("door")
    with pytest.raises(BundleError, match="serves no sources"):
        source_view(plain, "door")
    assert source_view(plain, "") is plain
    # the session of a source waits only for the devices of its lane
    assert ClusterClient(plan, source="door").roles == {s.device for s in plan.steps if s.source == "door"}
    # a version-2 reader's view of it: sources with an older schema version are an edited manifest
    d = plan.to_dict()
    d["schema_version"] = 2
    with pytest.raises(BundleError, match="sources but schema version 2"):
        Plan.from_dict(d)


class _Device:
    """A device's executor on its real bundle (real onnxruntime sessions), driven step by step as the
    agent's data thread drives it; what it sends and fails is recorded."""

    def __init__(self, bundle_dir):
        from edgepart.agent.device.executor import Executor

        self.sent: list[tuple[str, tuple, dict, str]] = []
        self.failed: list[tuple[tuple, str]] = []
        self.ex = Executor(load_bundle(bundle_dir), self._send, lambda key, why: self.failed.append((key, why)), threads=1)
        self.ex.load()

    def _send(self, dst, key, arrs, deadline, source, born):
        self.sent.append((dst, key, arrs, source))

    def drain(self) -> list[int]:
        """Run the queue empty; the request ids in the order their steps ran."""
        order = []
        for _ in range(100):
            if not self.ex.queue:
                return order
            key = self.ex.queue.in_order()[0][2][0]  # (key, work, (request key, request, step, when queued))
            order.append(key[1])
            self.ex.run_next()
        raise AssertionError("the queue did not drain")


def _heads(res, x):
    """What each source's head sends on (its cut), run on its own device's bundle."""
    out = {}
    for src in ("door", "yard"):
        view = res.plan.lane(src)
        head = next(s for s in view.steps if s.name == f"{src}.head")
        sess = ort.InferenceSession(str(res.bundle_dirs[head.device] / head.model_file), providers=["CPUExecutionProvider"])
        out[src] = dict(zip([o.name for o in head.outputs], sess.run([o.name for o in head.outputs], {"input": x})))
    return out


def test_a_device_serves_its_queue_by_priority_with_aging_and_answers_right(packaged):
    model, out = packaged
    res = out["priority"]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    heads = _heads(res, x)
    dev = _Device(res.bundle_dirs["jetson"])
    c = b"app"
    # three yard tasks arrive, then a door task: nothing runs until the data thread takes the queue
    for rid in (1, 2, 3):
        dev.ex.deliver((c, rid), heads["yard"], 10_000, "yard-cam", source="yard", age_ms=0.0)
    dev.ex.deliver((c, 4), heads["door"], 10_000, "door-cam", source="door", age_ms=0.0)
    said = dev.ex.queued()
    assert len(said) == 4 and said[0][0] == 10.0 and [w for w, _, _ in said[1:]] == [1.0, 1.0, 1.0]
    assert dev.drain() == [4, 1, 2, 3]  # the urgent one first, the others in their order
    assert len(dev.sent) == 4 and all(dst == CALLER for dst, *_ in dev.sent)
    for _, key, arrs, source in dev.sent:
        assert source == ("door" if key[1] == 4 else "yard")
        assert np.abs(arrs["logits"] - want).max() <= 1e-4
    # each step's time is measured from its second run on (the first is cold)
    ran = {st.source: m for st, m in zip(dev.ex.steps, dev.ex.step_ms)}
    assert dev.ex.completed == 4 and not dev.ex.requests and ran["yard"] > 0 and ran["door"] == 0
    # aging counts the wait in this queue, not the request's age: a yard task that waited here more
    # than aging_ms x (10 - 1) goes before a new door task; one made long ago that just came does not
    dev.sent.clear()
    aging, dev.ex.aging_ms = dev.ex.aging_ms, 20.0  # 180 ms of waiting is enough
    dev.ex.deliver((c, 6), heads["yard"], 10_000, "yard-cam", source="yard", age_ms=0.0)
    time.sleep(0.25)
    dev.ex.deliver((c, 5), heads["door"], 10_000, "door-cam", source="door", age_ms=0.0)
    dev.ex.deliver((c, 7), heads["yard"], 10_000, "yard-cam", source="yard", age_ms=5000.0)
    (_, waited6, _), (_, waited5, _), (_, waited7, _) = dev.ex.queued()
    assert waited6 >= 250.0 and waited5 < 250.0 and waited7 < 250.0  # what it tells its peers
    assert dev.drain() == [6, 5, 7]
    dev.ex.aging_ms = aging
    # what it says of its queue (Status.queue) is in serving order, with the work measured here
    dev.ex.deliver((c, 8), heads["yard"], 10_000, "yard-cam", source="yard", age_ms=0.0)
    dev.ex.deliver((c, 9), heads["door"], 10_000, "door-cam", source="door", age_ms=0.0)
    (w1, a1, m1), (w2, a2, m2) = dev.ex.queued()
    assert (w1, w2) == (10.0, 1.0) and m1 > 0 and m2 > 0 and a1 >= 0 and a2 >= 0
    dev.drain()


def test_the_baseline_queues_by_arrival_and_a_request_without_its_source_is_refused(packaged):
    from edgepart.errors import WireError

    _, out = packaged
    res = out["blind"]
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
    heads = _heads(res, x)
    helper = res.plan.lane("door").alternatives[0].devices[0]
    dev = _Device(res.bundle_dirs[helper])
    c = b"app"
    src_of = {}
    for rid, src in enumerate(["yard", "door", "yard", "door"], 1):
        if any(s.source == src and s.device == helper for s in res.plan.steps):
            dev.ex.deliver((c, rid), heads[src], 10_000, "x", source=src, age_ms=0.0)
            src_of[rid] = src
    assert dev.drain() == sorted(src_of)  # fifo: the order they came, whatever their priority
    with pytest.raises(WireError, match="serves the sources door, yard only"):
        dev.ex.deliver((c, 99), heads["door"], 10_000, "x", source="", age_ms=0.0)
    with pytest.raises(WireError, match="source 'gate'"):
        dev.ex.deliver((c, 99), heads["door"], 10_000, "x", source="gate", age_ms=0.0)
    assert not dev.ex.requests


def test_the_source_device_refuses_at_once_a_request_whose_deadline_is_out_of_reach(packaged):
    from edgepart.wire import DEADLINE_MARK, error_of
    from edgepart.errors import DeadlineRefused

    _, out = packaged
    res = out["priority"]
    dev = _Device(res.bundle_dirs["door-cam"])
    x = np.zeros((1, 3, 224, 224), np.float32)
    # door's deadline is 100 ms: a request already 150 ms old cannot meet it
    dev.ex.deliver((b"app", 1), {"input": x}, 10_000, "app", source="door", age_ms=150.0)
    assert dev.ex.refused == 1 and not dev.ex.requests and not dev.ex.queue
    (key, why), = dev.failed
    assert key == (b"app", 1) and why.startswith(DEADLINE_MARK)
    cause, text = error_of(why)
    assert cause is DeadlineRefused and "expected to take" in text and "deadline of 100 ms" in text
    # a fresh one is taken and queued; yard has no deadline: never refused
    dev.ex.deliver((b"app", 2), {"input": x}, 10_000, "app", source="door", age_ms=0.0)
    assert list(dev.ex.requests) == [(b"app", 2)] and dev.ex.refused == 1
    dev.drain()
    (dst, key, _, source), = dev.sent
    assert key == (b"app", 2) and source == "door" and dst in res.plan.lane("door").alternatives[0].devices


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

    now = time.monotonic()
    said["b"] = ((), now + 1.0, now)
    said["c"] = ((), now + 1.0, now)
    assert ch.pick(3, ["b", "c"], (1.0, 0.0)) == ["b"]
    # a long queue on b of low-priority work: an urgent task (weight 10) overtakes it, a weight-1 one does not
    said["b"] = (((1.0, 0.0, 50.0),), now + 2.0, now)
    assert ch.pick(4, ["b", "c"], (10.0, 0.0)) == ["b"]
    assert ch.pick(5, ["b", "c"], (1.0, 0.0)) == ["c"]


def test_work_ahead_follows_the_queue_order():
    q = ((10.0, 0.0, 5.0), (1.0, 500.0, 7.0), (1.0, 0.0, 11.0))  # (weight, ms waited there, work ms)
    assert ahead_ms(q, 0.0, 1.0, None) == 23.0  # FIFO: all of it
    # weight 10, arriving now: behind the other weight-10 task (there first), ahead of the weight-1
    # ones unless they have waited there 900 ms (aging 100 ms per unit of weight)
    assert ahead_ms(q, 0.0, 10.0, 100.0) == 5.0
    assert ahead_ms(q, 500.0, 10.0, 100.0) == 12.0  # 500 ms after the report, the weight-1 task has
    assert ahead_ms(q, 399.0, 10.0, 100.0) == 5.0  # waited 1000 ms; 399 ms after, 899 ms: not yet


def test_a_helpers_measured_step_time_replaces_the_packagers_estimate_in_its_cost():
    import dataclasses

    from edgepart.plan import Step, TensorSpec

    plan = _plan_with_group((10.0, 12.0))  # b: 10 ms, c: 12 ms, each with an estimated step of 8 ms
    t = TensorSpec("x", "float32", (1,))
    plan = dataclasses.replace(plan, steps=tuple(Step(f"tail@{d}", d, f"{d}.onnx", "0" * 64, (t,), (t,), estimated_ms=8.0)
                                                 for d in ("b", "c")))
    said: dict[str, tuple] = {}
    ch = Chooser(plan, figures=lambda d: said.get(d))
    now = time.monotonic()
    # b measured its tail at 30 ms (it is slower than planned): 10 - 8 + 30 = 32 ms against c's 12 (the
    # reports answered pings sent before the picks below: they count none of its claims)
    said["b"] = ((), now - 1.0, now, {"tail@b": 30.0})
    said["c"] = ((), now - 1.0, now, {})
    assert ch.pick(1, ["b", "c"], (1.0, 0.0)) == ["c"]
    # with its claim c costs 12 + 12 = 24 ms, still below b's 32; with two, 36: admission's best is then b's 32
    assert ch.pick(2, ["b", "c"], (1.0, 0.0)) == ["c"]
    assert ch.best_ms((1.0, 0.0)) == pytest.approx(32.0)
    assert ch.pick(3, ["b", "c"], (1.0, 0.0)) == ["b"]


def test_a_status_says_its_queue_and_steps_and_always_decodes():
    from edgepart.wire import MAX_NAME, Status

    st = Status(True, (), 1, "cpu affinity", ("onnx",), ("CPU",), "", ((10.0, 1.5, 3.25),), (("door.tail@jetson", 8.5),))
    back = Status.decode(st.encode())
    assert back.queue == ((10.0, 1.5, 3.25),) and back.steps == (("door.tail@jetson", 8.5),)
    # far too much to say: the queue is summed into its last entry, the steps cut; the text stays JSON
    big = Status(True, ("x" * 500,) * 8, 1, "", (), (), "", tuple((1.0, 2.0, 3.0) for _ in range(200)),
                 tuple((f"{i}" * 60, 1.0) for i in range(100)))
    text = big.encode()
    assert len(text) <= 4 * MAX_NAME and Status.decode(text) is not None


def test_sources_that_cut_at_one_node_share_one_tail_file_on_each_helper(packaged):
    """Two sources' tails from the same cut are the same model: each helper's bundle holds it once, both
    steps name that file, and the folder holds no file that no step names."""
    _, out = packaged
    shared = 0
    for mode, res in out.items():
        cuts = {p.source: p.cut for p in res.planned.allocation.placements}
        for dev, folder in res.bundle_dirs.items():
            steps = [s for s in res.plan.steps if s.device == dev]
            named = {s.model_file for s in steps} | {f for s in steps for f, _ in s.data_files}
            assert {p.name for p in folder.iterdir() if p.suffix in (".onnx", ".data")} == named, (mode, dev)
            by_file = {}
            for s in steps:
                by_file.setdefault(s.model_file, set()).add(s.sha256)
            assert all(len(v) == 1 for v in by_file.values())
            tails = [s for s in steps if "tail@" in s.name]
            if len(tails) == 2 and len(set(cuts.values())) == 1:
                assert tails[0].model_file == tails[1].model_file  # one file, named for the nodes it holds
                shared += 1
    assert shared, "no mode put both sources' cuts at one node: the sharing was not exercised"
