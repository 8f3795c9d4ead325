"""The executor runs a step once all its inputs are here, whatever order they arrive in, sends its
outputs along their routes, and finishes a request once every step ran (docs/agents.md, "Exchanges")."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepart.agent.device.executor import Executor
from edgepart.bundle import load_dist
from edgepart.plan import CALLER, Route, TensorSpec

SHAPE = (1, 8)


def _exchange_dist(out):
    """a: step0 x -> Neg -> x1 (to b); b: x1 -> Neg -> z (to a); a: step1 Add(x1, z) -> y (to the caller)."""
    from edgepart.packager.bundles import StepModel, model_plan, write_bundles
    from edgepart.packager.cluster import cluster_from_dict
    from edgepart.packager.model.graph import analyse

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(SHAPE))  # noqa: E731
    spec = lambda n: TensorSpec(n, "float32", SHAPE)  # noqa: E731
    opset = [helper.make_opsetid("", 17)]

    def step(name, dev, file, op, ins, o):
        g = helper.make_graph([helper.make_node(op, list(ins), [o])], name, [vi(i) for i in ins], [vi(o)])
        return StepModel(name, dev, file, helper.make_model(g, opset_imports=opset), tuple(spec(i) for i in ins),
                         (spec(o),), 1, 0.0)

    whole = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "m", [vi("x")], [vi("y")]),
                              opset_imports=opset)
    cluster = cluster_from_dict({"devices": [{"name": "a", "gflops": 1}, {"name": "b", "gflops": 1}],
                                 "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}})
    steps = [step("step0@a", "a", "step0.onnx", "Neg", ["x"], "x1"),
             step("step0@b", "b", "step0.onnx", "Neg", ["x1"], "z"),
             step("step1@a", "a", "step1.onnx", "Add", ["x1", "z"], "y")]
    routes = [Route("x", CALLER, "a"), Route("x1", "a", "b"), Route("z", "b", "a"), Route("y", "a", CALLER)]
    write_bundles(steps, lambda st: model_plan("channel", analyse(whole), cluster, st, routes, "exchange", "latency", ()), out)
    return load_dist(out)


@pytest.fixture
def device_a(tmp_path):
    sent: list[tuple[str, tuple, dict]] = []
    ex = Executor(_exchange_dist(tmp_path / "dist")["a"], lambda dst, key, arrs, deadline, source, born: sent.append((dst, key, arrs)),
                  lambda key, why: pytest.fail(why), threads=1)
    ex.load()
    return ex, sent


def test_steps_run_when_their_inputs_are_here(device_a):
    ex, sent = device_a
    x = np.arange(8, dtype=np.float32).reshape(SHAPE)
    ex.deliver((b"c", 1), {"x": x}, 5000)
    assert [(d, list(a)) for d, _, a in sent] == [("b", ["x1"])]  # step1 still waits for z
    ex.deliver((b"c", 1), {"x": x}, 5000)  # a tensor again: nothing runs twice
    assert len(sent) == 1 and ex.requests
    ex.deliver((b"c", 1), {"z": x}, 5000)
    assert [(d, list(a)) for d, _, a in sent] == [("b", ["x1"]), (CALLER, ["y"])]
    np.testing.assert_array_equal(sent[1][2]["y"], -x + x)  # y = x1 + z, x1 = -x computed here, z given
    assert not ex.requests and ex.completed == 1


def test_inputs_in_any_order_and_requests_apart(device_a):
    ex, sent = device_a
    x = np.ones(SHAPE, np.float32)
    ex.deliver((b"c", 2), {"z": 2 * x}, 5000)  # the peer's answer first (another request's, too)
    ex.deliver((b"c", 3), {"x": x}, 5000)
    assert [(d, k) for d, k, _ in sent] == [("b", (b"c", 3))]
    ex.deliver((b"c", 2), {"x": x}, 5000)
    assert [(d, k) for d, k, _ in sent][1:] == [("b", (b"c", 2)), (CALLER, (b"c", 2))]
    np.testing.assert_array_equal(sent[2][2]["y"], -x + 2 * x)
    assert list(ex.requests) == [(b"c", 3)] and ex.completed == 1
