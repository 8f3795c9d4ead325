"""The plan value: JSON round trip, a stable plan id, and an id that changes when anything does."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepart.errors import BundleError
from edgepart.plan import CALLER, SCHEMA_VERSION, Codec, DeviceSpec, Hints, Plan, Route, Step, TensorIO, TensorSpec

pytestmark = pytest.mark.timeout(60)


def make_plan() -> Plan:
    """A hand-made two-device plan that uses every field, non-default values included."""
    x = TensorSpec("x", "float32", ("N", 3, 8, 8))
    h = TensorSpec("h", "float32", ("N", 6, 8, 8))
    n = TensorSpec("n", "int64", ())
    y = TensorSpec("y", "float32", ("N", 10))
    return Plan(
        strategy="pipeline",
        model_name="net",
        model_sha256="ab" * 32,
        inputs=(x,),
        outputs=(y,),
        devices=(DeviceSpec("jetson", ("CUDAExecutionProvider", "CPUExecutionProvider")), DeviceSpec("pi")),
        steps=(
            Step("stage0", "jetson", "stage0.onnx", "11" * 32, (x,), (h, n), nodes=4, estimated_ms=1.25),
            Step("stage1", "pi", "stage1.onnx", "22" * 32, (h, n), (y,),
                 data_files=(("stage1.onnx.data", "33" * 32),), nodes=5, estimated_ms=7.5),
        ),
        routes=(
            Route("x", CALLER, "jetson"),
            Route("h", "jetson", "pi", Codec("channels", (("keep", (0, 2, 5)), ("axis", 1)))),
            Route("n", "jetson", "pi", Codec("fp16")),
            Route("y", "pi", CALLER),
        ),
        objective="throughput",
        estimates=(("latency_ms", 9.0), ("period_ms", 7.5)),
    )


def round_trip(plan: Plan) -> Plan:
    return Plan.from_dict(json.loads(json.dumps(plan.to_dict())))


def test_json_round_trip_is_equal():
    plan = make_plan()
    back = round_trip(plan)
    assert back == plan
    assert back.plan_id == plan.plan_id
    assert back.to_dict() == plan.to_dict()
    assert round_trip(back) == plan
    assert back.routes[1].codec.param("keep") == (0, 2, 5)
    assert back.routes[1].codec.param("missing", 7) == 7
    assert back.steps[1].files() == {"stage1.onnx": "22" * 32, "stage1.onnx.data": "33" * 32}


def test_plan_id_is_a_short_stable_hash():
    plan = make_plan()
    pid = plan.plan_id
    assert len(pid) == 16 and int(pid, 16) >= 0
    assert make_plan().plan_id == pid
    # the same in another interpreter with another hash seed: nothing depends on set or dict order
    code = ("import sys; sys.path.insert(0, %r); from test_plan import make_plan; print(make_plan().plan_id)"
            % str(Path(__file__).parent))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == pid


def test_schema_version_is_written_and_checked():
    d = make_plan().to_dict()
    assert d["schema_version"] == 1  # all ONNX: the oldest version that holds it
    for other in (0, SCHEMA_VERSION + 1, None, "1", True):
        bad = dict(d, schema_version=other)
        with pytest.raises(BundleError, match="schema version"):
            Plan.from_dict(bad)


def test_a_tflite_step_round_trips_as_version_2_and_version_1_refuses_it():
    plan = make_plan()
    io = (TensorIO("h", "serving_h", (0, 2, 3, 1)), TensorIO("n", "serving_n"), TensorIO("y", "Identity"))
    st = dataclasses.replace(plan.steps[1], model_file="stage1.tflite", data_files=(), runtime="tflite", io=io)
    tfl = dataclasses.replace(plan, steps=(plan.steps[0], st))
    d = tfl.to_dict()
    assert d["schema_version"] == 2 and d["steps"][1]["runtime"] == "tflite" and "runtime" not in d["steps"][0]
    back = round_trip(tfl)
    assert back == dataclasses.replace(tfl, schema_version=2) and back.plan_id == tfl.plan_id
    assert back.steps[1].io[0].perm == (0, 2, 3, 1) and back.steps[1].io[1].perm == ()
    with pytest.raises(BundleError, match="TFLite steps but schema version 1"):
        Plan.from_dict(dict(d, schema_version=1))
    with pytest.raises(BundleError, match="runtime 'tflite' with 0 TFLite tensor maps"):
        dataclasses.replace(tfl, steps=(plan.steps[0], dataclasses.replace(st, io=())))
    with pytest.raises(BundleError, match="runtime 'litert'"):
        dataclasses.replace(tfl, steps=(plan.steps[0], dataclasses.replace(st, runtime="litert")))


@pytest.mark.parametrize("key", ["strategy", "inputs", "steps", "routes", "devices", "model_sha256"])
def test_missing_field_is_a_clear_bundle_error(key):
    d = make_plan().to_dict()
    del d[key]
    with pytest.raises(BundleError, match="malformed.*package the model again"):
        Plan.from_dict(d)


def test_new_fields_have_defaults():
    """An older writer's plan without the optional fields still reads, with the defaults."""
    d = make_plan().to_dict()
    for k in ("objective", "estimates"):
        del d[k]
    for s in d["steps"]:
        for k in ("data_files", "nodes", "estimated_ms"):
            del s[k]
    for r in d["routes"]:
        del r["codec"]
    for dev in d["devices"]:
        del dev["providers"]
    p = Plan.from_dict(d)
    assert p.objective == "latency" and p.estimates == ()
    assert all(r.codec == Codec() for r in p.routes)
    assert all(dv.providers == ("CPUExecutionProvider",) for dv in p.devices)
    assert p.steps[1].data_files == () and p.steps[1].nodes == 0


def _mutations(plan: Plan):
    """(label, plan) for one change to every field of every kind of value in the plan."""
    rep = dataclasses.replace
    s0, s1 = plan.steps
    r1 = plan.routes[1]
    x = plan.inputs[0]
    yield "strategy", rep(plan, strategy="channel")
    yield "model_name", rep(plan, model_name="net2")
    yield "model_sha256", rep(plan, model_sha256="cd" * 32)
    yield "input name", rep(plan, inputs=(rep(x, name="x2"),))
    yield "input dtype", rep(plan, inputs=(rep(x, dtype="float16"),))
    yield "input shape (symbolic -> concrete)", rep(plan, inputs=(rep(x, shape=(1, 3, 8, 8)),))
    yield "input dim name", rep(plan, inputs=(rep(x, shape=("B", 3, 8, 8)),))
    yield "output shape", rep(plan, outputs=(rep(plan.outputs[0], shape=("N", 11)),))
    yield "device name", rep(plan, devices=(plan.devices[0], DeviceSpec("pi2")))
    yield "device providers", rep(plan, devices=(rep(plan.devices[0], providers=("CPUExecutionProvider",)), plan.devices[1]))
    yield "device order", rep(plan, devices=plan.devices[::-1])
    yield "step order", rep(plan, steps=plan.steps[::-1])
    for f, v in [("name", "s0"), ("device", "pi"), ("model_file", "a.onnx"), ("sha256", "44" * 32),
                 ("inputs", ()), ("outputs", (s0.outputs[0],)), ("data_files", (("d", "55" * 32),)),
                 ("nodes", 5), ("estimated_ms", 1.5)]:
        yield f"step.{f}", rep(plan, steps=(rep(s0, **{f: v}), s1))
    yield "data file hash", rep(plan, steps=(s0, rep(s1, data_files=(("stage1.onnx.data", "66" * 32),))))
    yield "route tensor", rep(plan, routes=(plan.routes[0], rep(r1, tensor="h2"), *plan.routes[2:]))
    yield "route src", rep(plan, routes=(plan.routes[0], rep(r1, src=CALLER), *plan.routes[2:]))
    yield "route dst", rep(plan, routes=(plan.routes[0], rep(r1, dst=CALLER), *plan.routes[2:]))
    yield "codec kind", rep(plan, routes=(plan.routes[0], rep(r1, codec=Codec("dense")), *plan.routes[2:]))
    yield "codec param", rep(plan, routes=(plan.routes[0], rep(r1, codec=Codec("channels", (("keep", (0, 2, 6)), ("axis", 1)))), *plan.routes[2:]))
    yield "route dropped", rep(plan, routes=plan.routes[:-1])
    yield "objective", rep(plan, objective="latency")
    yield "estimate", rep(plan, estimates=(("latency_ms", 9.5), ("period_ms", 7.5)))
    yield "schema_version", rep(plan, schema_version=SCHEMA_VERSION + 1)
    yield "hints", rep(plan, hints=Hints("jetson", "stage0", "pi"))
    yield "hints exit", rep(plan, hints=Hints("jetson", "stage0", ""))


def test_plan_id_changes_when_anything_changes():
    plan = make_plan()
    ids = {plan.plan_id: "original"}
    for label, changed in _mutations(plan):
        assert changed != plan, label
        pid = changed.plan_id
        assert pid not in ids, f"changing {label} gives the same plan id as {ids.get(pid)}"
        ids[pid] = label
    assert len(ids) > 30


def test_plan_lookups():
    plan = make_plan()
    assert plan.device_names() == ("jetson", "pi")
    assert [s.name for s in plan.steps_of("pi")] == ["stage1"]
    assert [r.tensor for r in plan.routes_from("jetson")] == ["h", "n"]
    assert [r.tensor for r in plan.routes_to(CALLER)] == ["y"]
    assert [r.tensor for r in plan.routes_from(CALLER)] == ["x"]


def test_values_are_frozen():
    plan = make_plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.strategy = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps[0].sha256 = "0"  # type: ignore[misc]
    hash(plan.steps[0].inputs[0])


def test_device_threads_round_trip_and_leave_other_plans_ids_alone():
    """A device's `threads` (cluster.yaml) travels in the plan; a plan without it serialises as
    before, so its id does not change."""
    plan = make_plan()
    assert all("threads" not in d for d in plan.to_dict()["devices"])
    with_threads = dataclasses.replace(plan, devices=(plan.devices[0], DeviceSpec("pi", threads=2)))
    assert round_trip(with_threads) == with_threads
    assert round_trip(with_threads).devices[1].threads == 2
    assert with_threads.plan_id != plan.plan_id


def test_cluster_threads_reach_the_plan_and_bad_values_are_refused():
    from edgepart.errors import ClusterError
    from edgepart.packager.cluster import cluster_from_dict

    c = cluster_from_dict({"devices": [{"name": "pi", "gflops": 5, "threads": 1}, {"name": "jetson", "gflops": 50}]})
    assert [d.threads for d in c.devices] == [1, 0]
    for bad in (-1, 1.5, "two", True):
        with pytest.raises(ClusterError, match="threads must be a whole number"):
            cluster_from_dict({"devices": [{"name": "pi", "gflops": 5, "threads": bad}]})


def test_hints_round_trip_are_written_only_when_set_and_name_the_plans_devices():
    """The fast-path hints (edgepart.plan.Hints) travel in the plan; a plan without them serialises as
    before (its id unchanged), and one with only some writes only those."""
    plan = make_plan()
    assert "hints" not in plan.to_dict() and not plan.hints
    full = dataclasses.replace(plan, hints=Hints("jetson", "stage0", "pi"))
    assert full.to_dict()["hints"] == {"entry": "jetson", "entry_step": "stage0", "exit": "pi"}
    assert round_trip(full) == full and full.plan_id != plan.plan_id
    only_exit = dataclasses.replace(plan, hints=Hints(exit="pi"))
    assert only_exit.to_dict()["hints"] == {"exit": "pi"} and round_trip(only_exit) == only_exit
    with pytest.raises(BundleError, match="hints"):
        dataclasses.replace(plan, hints=Hints("tpu"))


def test_the_packager_reads_the_hints_off_the_routes():
    """packager/bundles.py's fast_path_hints, on the hand-made plan and on variations of it."""
    pytest.importorskip("onnx")
    from edgepart.packager.bundles import fast_path_hints

    plan = make_plan()
    rep = dataclasses.replace
    assert fast_path_hints(plan.steps, plan.routes) == Hints("jetson", "stage0", "pi")
    # the entry answers too: still the one exit besides it
    assert fast_path_hints(plan.steps, (*plan.routes, Route("h", "jetson", CALLER))) == Hints("jetson", "stage0", "pi")
    # inputs to two devices: no entry, and both answer: no exit
    two_in = (*plan.routes, Route("x", CALLER, "pi"), Route("h", "jetson", CALLER))
    assert fast_path_hints(plan.steps, two_in) == Hints()
    # the entry's step fed by a peer too, or a second step on the entry: an entry without an entry step
    fed_back = (*plan.routes, Route("x", "pi", "jetson"))
    assert fast_path_hints(plan.steps, fed_back) == Hints("jetson", "", "pi")
    second = rep(plan.steps[1], name="stage2", device="jetson")
    assert fast_path_hints((*plan.steps, second), plan.routes) == Hints("jetson", "", "pi")


def _paths(x, at=()):
    """Every place in a JSON value: (path of keys and indices, value)."""
    yield at, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, at + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, at + (i,))


def _replaced(d, path, value):
    d = json.loads(json.dumps(d))
    *parents, last = path
    holder = d
    for k in parents:
        holder = holder[k]
    if value is _DELETE:
        del holder[last]
    else:
        holder[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize("written", ["onnx", "tflite"])
def test_every_malformed_manifest_is_a_bundle_error(written):
    """Whatever part of the plan is replaced by a value of another kind, or removed, reading it
    gives a Plan or a BundleError: never a KeyError, TypeError or AttributeError traceback (the
    schema version's own check included: a version-1 plan with malformed steps)."""
    plan = make_plan()
    if written == "tflite":
        st = plan.steps[1]
        plan = dataclasses.replace(plan, steps=(plan.steps[0], dataclasses.replace(
            st, model_file="stage1.tflite", runtime="tflite",
            io=(TensorIO("h", "h_0", (0, 2, 3, 1)), TensorIO("n", "n_0"), TensorIO("y", "y_0")))))
    d = plan.to_dict()
    strange = [None, 7, 1.5, True, "x", [], [1], {}, {"a": 1}]
    tried = 0
    for path, _ in list(_paths(d)):
        if not path:
            continue
        for value in [*strange, _DELETE]:
            bad = _replaced(d, path, value)
            try:
                back = Plan.from_dict(bad)
            except BundleError:
                continue
            finally:
                tried += 1
            # it read: then what it read has the kinds the rest of edgepart relies on
            assert all(isinstance(v, str) for s in back.steps for v in (s.name, s.device, s.model_file, s.sha256)), path
            assert all(isinstance(x.name, str) for x in back.devices), path
            back.plan_id  # and it hashes
    assert tried > 1000
    for top in (None, [], "plan", 3):
        with pytest.raises(BundleError):
            Plan.from_dict(top)
    v1 = _replaced(d, ("schema_version",), 1)
    for steps in (3, "stage0", None, {"name": "stage0"}, [3], ["stage0"]):
        with pytest.raises(BundleError, match="malformed|TFLite steps but schema version 1"):
            Plan.from_dict(_replaced(v1, ("steps",), steps))


def test_cluster_providers_take_short_names_and_refuse_unknown_ones():
    """cluster.yaml's providers are read with `--providers`' names (edgepart.runtime.SHORT_NAMES) and
    written into the plan as onnxruntime's, so the agent's auto keeps the preference; an unknown
    name is refused, not skipped without a word."""
    from edgepart.errors import ClusterError
    from edgepart.packager.cluster import cluster_from_dict

    def providers(p):
        return cluster_from_dict({"devices": [{"name": "a", "gflops": 5, "providers": p}]}).devices[0].providers

    assert providers(["cuda", "cpu"]) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert providers("tensorrt") == ("TensorrtExecutionProvider",)
    assert providers(["xnnpack", "ACL"]) == ("XnnpackExecutionProvider", "ACLExecutionProvider")
    assert providers(["CUDAExecutionProvider", "cuda"]) == ("CUDAExecutionProvider",)
    assert providers(["cudaexecutionprovider"]) == ("CUDAExecutionProvider",)
    assert providers(["auto"]) == providers([]) == ("CPUExecutionProvider",)  # no preference
    for bad in (["gpu"], ["cuda", "auto"], ["CudaExecProvider"], ["FooExecutionProvider"]):
        with pytest.raises(ClusterError, match=r"devices\[0\]\.providers names .*does not know.*tensorrt, trt, cuda"):
            providers(bad)
    with pytest.raises(ClusterError, match="must be a list of execution providers"):
        providers(3)
