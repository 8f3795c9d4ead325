"""Alternative devices (edgepart.plan.Alternatives): the sender picks one per request by the plan's
rule (agent/net/choose.py), the same one for every tensor of that request; an agent whose outputs go to
a group of alternatives sends each request's outputs to one of them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepart.agent.net.choose import Chooser
from edgepart.agent.device.executor import Executor
from edgepart.bundle import load_dist
from edgepart.errors import BundleError
from edgepart.plan import CALLER, Alternatives, Plan, Route, TensorSpec

SHAPE = (1, 4)


def _plan(*groups: Alternatives) -> Plan:
    from edgepart.plan import DeviceSpec

    return Plan("replicas", "m", "0" * 64, (), (), tuple(DeviceSpec(d) for d in ("a", "b", "c", "d")), (), (),
                alternatives=groups)


def test_round_robin_takes_turns_and_keeps_a_request_on_its_pick():
    ch = Chooser(_plan(Alternatives(("a", "b", "c"), "round-robin")))
    picks = [ch.pick(rid, ["a", "b", "c", "d"]) for rid in range(6)]
    assert picks == [["a", "d"], ["b", "d"], ["c", "d"], ["a", "d"], ["b", "d"], ["c", "d"]]
    assert ch.pick(1, ["a", "b", "c"]) == ["b"]  # request 1's other tensors go where its first went
    assert ch.passed_over(1) == {"a", "c"}


def test_least_outstanding_takes_the_least_loaded_and_counts_what_is_done():
    ch = Chooser(_plan(Alternatives(("a", "b"), "least-outstanding")))
    assert ch.pick(1, ["a", "b"]) == ["a"]  # ties: the plan's order
    assert ch.pick(2, ["a", "b"]) == ["b"]
    assert ch.pick(3, ["a", "b"]) == ["a"]
    assert ch.outstanding() == {"a": 2, "b": 1}
    ch.done(1)
    ch.done(3)
    assert ch.pick(4, ["a", "b"]) == ["a"] and ch.outstanding() == {"a": 1, "b": 1}
    ch.done(4)
    ch.done(4)  # done twice counts once
    assert ch.outstanding() == {"a": 0, "b": 1}


def test_no_alternatives_leaves_destinations_alone():
    ch = Chooser(_plan())
    assert not ch and ch.pick(1, ["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize("groups, needle", [
    ((Alternatives(("a", "b"), "random"),), "unknown rule 'random'"),
    ((Alternatives(("a",)),), "malformed"),
    ((Alternatives(("a", "b")), Alternatives(("b", "c"))), "malformed"),
    ((Alternatives(("a", "z")),), "malformed"),
])
def test_malformed_alternatives_are_refused(groups, needle):
    with pytest.raises(BundleError, match=needle):
        _plan(*groups)


def test_alternatives_survive_json_and_change_the_plan_id():
    p = _plan(Alternatives(("a", "b"), "least-outstanding"))
    assert Plan.from_dict(p.to_dict()) == p
    assert "alternatives" not in _plan().to_dict()  # plans without them keep their ids
    assert p.plan_id != _plan().plan_id


def _fanout_dist(out):
    """a: x -> Neg -> h, sent to b or c (alternatives, round-robin); b and c: h -> Neg -> y to the caller."""
    from edgepart.packager.bundles import StepModel, model_plan, write_bundles
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(SHAPE))  # noqa: E731
    spec = lambda n: TensorSpec(n, "float32", SHAPE)  # noqa: E731
    opset = [helper.make_opsetid("", 17)]

    def step(name, dev, i, o):
        g = helper.make_graph([helper.make_node("Neg", [i], [o])], name, [vi(i)], [vi(o)])
        return StepModel(name, dev, "step.onnx", helper.make_model(g, opset_imports=opset), (spec(i),), (spec(o),), 1, 0.0)

    whole = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])],
                                                "m", [vi("x")], [vi("y")]), opset_imports=opset)
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": 1} for d in "abc"],
                                 "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}})
    steps = [step("first@a", "a", "x", "h"), step("second@b", "b", "h", "y"), step("second@c", "c", "h", "y")]
    routes = [Route("x", CALLER, "a"), Route("h", "a", "b"), Route("h", "a", "c"), Route("y", "b", CALLER),
              Route("y", "c", CALLER)]

    def make(st):
        import dataclasses

        p = model_plan("pipeline", analyse(whole), cluster, st, routes, "fanout", "latency", ())
        return dataclasses.replace(p, alternatives=(Alternatives(("b", "c"), "round-robin"),))

    write_bundles(steps, make, out)
    return load_dist(out)


def test_an_agent_sends_each_request_to_one_alternative(tmp_path):
    dist = _fanout_dist(tmp_path / "dist")
    sent: list[tuple[str, tuple, dict]] = []
    ex = Executor(dist["a"], lambda dst, key, arrs, deadline, source, born: sent.append((dst, key, arrs)),
                  lambda key, why: pytest.fail(why), threads=1)
    ex.load()
    x = np.arange(4, dtype=np.float32).reshape(SHAPE)
    for rid in range(4):
        ex.deliver((b"c", rid), {"x": x}, 5000)
    assert [(d, k[1]) for d, k, _ in sent] == [("b", 0), ("c", 1), ("b", 2), ("c", 3)]
    assert all(np.array_equal(a["h"], -x) for _, _, a in sent)
    assert not ex.requests and ex.lanes[""].chooser.outstanding() == {"b": 0, "c": 0}
