"""Steps converted to TFLite and run on LiteRT (docs/tflite.md): real steps of EfficientNet-Lite0 cut
by the pipeline packager, and small graphs built here whose shapes make the layout question sharp.

The converter's environment is made on first use (minutes, once per machine; the module's timeout
covers it); every conversion after that takes seconds to half a minute. Nothing here is mocked:
onnx2tf really converts, pip really fails, the network really is absent where a test says so.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepart.errors import BundleError, ConversionError
from edgepart.litert import litert_runtime, make_tflite_session
from edgepart.plan import TensorIO
from edgepart.runtime import make_session

pytestmark = [pytest.mark.models, pytest.mark.timeout(1800)]  # the first use builds the converter env

env = pytest.importorskip("edgepart.packager.tflite.env")
from edgepart.packager.tflite import check_step, convert_step  # noqa: E402

MIDDLE_IN = "/_blocks.5/_project_conv/Conv_output_0"


def conv_model(c: int, h: int, w: int, c_out: int, seed: int, scalar_output: bool = False) -> onnx.ModelProto:
    """x [1, c, h, w] -> 3x3 conv -> relu -> y [1, c_out, h, w] (and the mean of x as a 0-d tensor)."""
    rng = np.random.default_rng(seed)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [c_out, c, 3, 3], rng.standard_normal((c_out, c, 3, 3)).ravel())
    bias = helper.make_tensor("b", TensorProto.FLOAT, [c_out], rng.standard_normal(c_out))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["z"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, h, w])]
    if scalar_output:
        nodes.append(helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0))
        outs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, []))
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])], outs,
                          [weight, bias])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def converter() -> Path:
    """The converter's environment, made here from nothing on a machine that has none."""
    t0 = time.monotonic()
    path = env.converter_env()
    print(f"converter environment ready in {time.monotonic() - t0:.1f} s")
    assert env.is_ready(path) and (path / env.STAMP).is_file()
    return path


@pytest.fixture(scope="module")
def tiny(converter, tmp_path_factory) -> dict[str, tuple[Path, Path, tuple[TensorIO, ...]]]:
    """Small steps converted once: "odd" (C != H != W, and a 0-d second output), "cube" and "cube2"
    (C == H == W == 8, different weights)."""
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, model in {"odd": conv_model(3, 10, 7, 5, 0, scalar_output=True), "cube": conv_model(8, 8, 8, 8, 1),
                        "cube2": conv_model(8, 8, 8, 8, 2)}.items():
        path = d / f"{name}.onnx"
        onnx.save(model, str(path))
        tfl, io = convert_step(path, d / "tflite")
        out[name] = (path, tfl, io)
    return out


@pytest.fixture(scope="module")
def effnet(efficientnet_lite0_path, tmp_path_factory) -> dict:
    """EfficientNet-Lite0 packaged into a 3-stage pipeline; its middle stage (4-D NCHW in and out)
    and the real activations that reach it from the first stage."""
    import edgepart.packager as packager
    from edgepart.testing import zoo

    d = tmp_path_factory.mktemp("effnet")
    (d / "cluster.yaml").write_text(textwrap.dedent("""\
        devices:
          - {name: a, speed: 1}
          - {name: b, speed: 1}
          - {name: c, speed: 1}
        links:
          default: {bandwidth_mbps: 10000, latency_ms: 0.01}
        """))
    res = packager.package(efficientnet_lite0_path, d / "cluster.yaml", out=d / "dist", strategy="pipeline",
                           objective="throughput", input_shapes={"input": (1, 3, 224, 224)})
    steps = {s.name: s for s in res.plan.steps}
    first, middle = steps["stage0"], steps["stage1"]
    assert [len(t.shape) for t in (*middle.inputs, *middle.outputs)] == [4, 4]
    assert middle.inputs[0].name == MIDDLE_IN and middle.inputs[0].shape[1:] != middle.outputs[0].shape[1:]
    images = zoo.imagenet_inputs(4)["input"]
    s0 = make_session(d / "dist" / first.device / first.model_file, threads=1)
    acts = [{MIDDLE_IN: s0.run([MIDDLE_IN], {"input": images[i:i + 1]})[0]} for i in range(len(images))]
    return {"step": d / "dist" / middle.device / middle.model_file, "samples": acts, "out": middle.outputs[0].name,
            "dir": d, "last": d / "dist" / steps["stage2"].device / steps["stage2"].model_file}


@pytest.fixture(scope="module")
def middle_f32(converter, effnet):
    t0 = time.monotonic()
    tfl, io = convert_step(effnet["step"], effnet["dir"] / "f32", precision="float32")
    print(f"stage1 float32 converted in {time.monotonic() - t0:.1f} s")
    return tfl, io


# -- conversion and layouts ----------------------------------------------------------------------------

def test_middle_stage_float32_matches_onnx_in_the_plan_layout(effnet, middle_f32):
    tfl, io = middle_f32
    assert [(t.name, t.key, t.perm) for t in io] == [(MIDDLE_IN, "x0", (0, 2, 3, 1)), (effnet["out"], "y0", (0, 2, 3, 1))]
    ref = make_session(effnet["step"], threads=1)
    sess = make_tflite_session(tfl, io, threads=1)
    worst = 0.0
    for feeds in effnet["samples"]:
        want, got = ref.run([effnet["out"]], feeds), sess.run([effnet["out"]], feeds)
        assert got[0].shape == (1, 672, 14, 14) and got[0].flags.c_contiguous  # the plan's NCHW, not NHWC
        worst = max(worst, diff(want, got))
    print(f"float32 max abs diff {worst:.3g}")
    assert worst <= 1e-4
    assert check_step(effnet["step"], tfl, io, effnet["samples"], 1e-4) == pytest.approx(worst)


def test_middle_stage_float16_converts_and_stays_close(effnet, converter):
    t0 = time.monotonic()
    tfl, io = convert_step(effnet["step"], effnet["dir"] / "f16", precision="float16")
    took = time.monotonic() - t0
    d = check_step(effnet["step"], tfl, io, effnet["samples"], 0.05)
    print(f"float16: converted in {took:.1f} s, max abs diff {d:.3g}; {tfl.stat().st_size} bytes")
    assert tfl.stat().st_size < 0.6 * (effnet["step"].stat().st_size)  # half-size weights


def test_middle_stage_int8_calibrated_on_real_activations(effnet, converter):
    calib = {MIDDLE_IN: np.concatenate([f[MIDDLE_IN] for f in effnet["samples"]])}
    t0 = time.monotonic()
    tfl, io = convert_step(effnet["step"], effnet["dir"] / "i8", precision="int8", calibration=calib)
    took = time.monotonic() - t0
    assert [t.perm for t in io] == [(0, 2, 3, 1), (0, 2, 3, 1)]
    scale = max(float(np.max(np.abs(make_session(effnet["step"]).run(None, f)[0]))) for f in effnet["samples"])
    d = check_step(effnet["step"], tfl, io, effnet["samples"], 0.1 * scale)
    print(f"int8: converted in {took:.1f} s, max abs diff {d:.3g} (outputs up to {scale:.3g}); "
          f"{tfl.stat().st_size} bytes")
    assert tfl.stat().st_size < 0.35 * effnet["step"].stat().st_size  # quarter-size weights


@pytest.mark.parametrize("name", ["odd", "cube"])
def test_layouts_are_found_by_the_numbers_not_guessed(tiny, name):
    path, tfl, io = tiny[name]
    perms = {t.name: t.perm for t in io}
    assert perms["x"] == (0, 2, 3, 1) and perms["y"] == (0, 2, 3, 1)  # onnx2tf made both NHWC
    if name == "odd":
        assert perms["m"] == ()
    rng = np.random.default_rng(7)
    x = rng.standard_normal(tuple(make_session(path).get_inputs()[0].shape)).astype(np.float32)
    names = [t.name for t in io[1:]]
    want = make_session(path, threads=1).run(names, {"x": x})
    got = make_tflite_session(tfl, io, threads=1).run(names, {"x": x})
    assert diff(want, got) <= 1e-4
    # had the runner let TFLite's NHWC through (no perms), the step would compute something else:
    # for the 8x8x8 cube the shapes agree and only the numbers tell
    leaked = [TensorIO(t.name, t.key) for t in io]
    if name == "cube":
        assert diff(want, make_tflite_session(tfl, leaked, threads=1).run(names, {"x": x})) > 0.1
    else:
        with pytest.raises(Exception):
            make_tflite_session(tfl, leaked, threads=1).run(names, {"x": x})


def test_conversion_never_reaches_the_network(tiny, tmp_path):
    """An RGB-image-shaped input (the "odd" step's 3 channels) is where onnx2tf downloads its sample
    images; here it converts in a network namespace with no network at all."""
    path = tiny["odd"][0]
    code = (f"from edgepart.packager.tflite import convert_step; "
            f"p, io = convert_step({str(path)!r}, {str(tmp_path)!r}); print(p, io)")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "odd.tflite").is_file()


def test_an_operator_onnx2tf_cannot_convert_is_named(converter, tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CastLike", ["r", "t"], ["y"])]
    g = helper.make_graph(nodes, "castlike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 5]),
                                              helper.make_tensor_value_info("t", TensorProto.DOUBLE, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4, 6, 5])])
    path = tmp_path / "castlike.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ConversionError) as e:
        convert_step(path, tmp_path / "out", step="stage7")
    assert e.value.step == "stage7" and e.value.operator == "CastLike"
    msg = str(e.value)
    assert "CastLike" in msg and "it ends: " in msg and "Traceback" not in msg and len(msg.splitlines()) == 1
    log = tmp_path / "out" / "castlike.onnx2tf.log"
    assert log.is_file() and str(log) in msg
    assert not list((tmp_path / "out").glob("*.tflite")) and not list((tmp_path / "out").glob(".*"))


def test_minilm_at_12_tokens_padded_is_right_on_litert(converter, minilm_path, tmp_path):
    """MiniLM (12 heads) packaged as a 2-stage TFLite pipeline for 12 tokens, from a padded sentence.
    onnx2tf chooses some transpositions by checking them on test inputs; on its own (all ones) the
    padding mask is all ones, every transposition of it agrees, and at 12 tokens = 12 heads it took a
    wrong one: both stages added the padding by head instead of by key (docs/tflite.md). The bundles'
    answers, chained stage to stage on LiteRT, against onnxruntime on the whole model: for the
    packaging sentence, for one with other padding, and for one with none."""
    import edgepart.packager as packager
    from edgepart.bundle import load_dist
    from edgepart.runtime import make_step_session

    rng = np.random.default_rng(12)

    def sentence(real: int) -> dict[str, np.ndarray]:  # [CLS] words [SEP] then padding, 12 tokens
        ids = np.zeros((1, 12), np.int64)
        ids[0, :real] = [101, *rng.integers(2000, 20000, real - 2), 102]
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}

    (tmp_path / "cluster.yaml").write_text("devices:\n  - {name: a, speed: 1}\n  - {name: b, speed: 1}\n"
                                           "links:\n  default: {bandwidth_mbps: 10000, latency_ms: 0.01}\n")
    sample = sentence(9)
    t0 = time.monotonic()
    packager.package(minilm_path, tmp_path / "cluster.yaml", out=tmp_path / "dist", strategy="pipeline",
                     objective="throughput", input_shapes={k: (1, 12) for k in sample}, inputs=sample, format="tflite")
    print(f"MiniLM packaged, both stages converted and checked, in {time.monotonic() - t0:.0f} s")
    plan = next(iter(load_dist(tmp_path / "dist").values())).plan
    assert [s.runtime for s in plan.steps] == ["tflite", "tflite"]
    sessions = [(s, make_step_session(tmp_path / "dist" / s.device / s.model_file, s, threads=1)) for s in plan.steps]
    ref = make_session(minilm_path, threads=1)
    for feeds in (sample, sentence(5), sentence(12)):
        tensors = dict(feeds)
        for st, sess in sessions:  # the pipeline's order: each stage reads what the ones before it made
            outs = sess.run([o.name for o in st.outputs], {i.name: tensors[i.name] for i in st.inputs})
            tensors.update({o.name: y for o, y in zip(st.outputs, outs)})
        want = ref.run(["sentence_embedding"], feeds)
        d = diff(want, [tensors["sentence_embedding"]])
        print(f"{int(feeds['attention_mask'].sum())} of 12 tokens: max abs diff {d:.3g}")
        assert d <= 1e-4  # a unit vector; the wrong mask was off by 0.04 or more


def test_a_real_step_onnx2tf_fails_on_names_its_node(effnet, converter):
    """EfficientNet's last stage reads the batch size as a 0-d tensor from the first stage and
    concatenates it into a Reshape's shape: onnx2tf 1.29.24 fails on that Concat."""
    with pytest.raises(ConversionError) as e:
        convert_step(effnet["last"], effnet["dir"] / "last")
    assert e.value.operator == "Concat" and "/Concat" in str(e.value) and e.value.step == "stage2"


def test_the_check_catches_a_file_of_another_step(tiny):
    path, _, io = tiny["cube"]
    _, other_tfl, other_io = tiny["cube2"]
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 8)).astype(np.float32)
    assert check_step(path, tiny["cube"][1], io, [{"x": x}], 1e-4) <= 1e-4
    with pytest.raises(ConversionError) as e:
        check_step(path, other_tfl, other_io, [{"x": x}], 1e-4, step="stage1")
    assert e.value.step == "stage1" and "'y'" in str(e.value) and "tolerance" in str(e.value)


def test_a_conversion_past_its_deadline_is_stopped(tiny, tmp_path):
    path = tiny["cube"][0]
    t0 = time.monotonic()
    with pytest.raises(ConversionError, match="longer than 2 s") as e:
        convert_step(path, tmp_path, timeout_s=2)  # TensorFlow alone takes longer to import
    assert time.monotonic() - t0 < 30 and e.value.step == "cube"
    assert (tmp_path / "cube.onnx2tf.log").is_file() and not list(tmp_path.glob("*.tflite"))
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()  # its job file
    assert not left, f"converter processes left running: {left}"


def test_an_interrupted_conversion_leaves_no_converter_running(tiny, tmp_path):
    """Ctrl-C in the packager while onnx2tf runs: the converter (in a session of its own, so the
    terminal's SIGINT never reaches it) is killed with its process group, and the interrupt goes on."""
    out = tmp_path / "out"
    code = ("import os, sys\nfrom edgepart.packager.tflite import convert_step\n"
            "convert_step(sys.argv[1], os.environ['OUT_DIR'])\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tiny["cube"][0])], env={**os.environ, "OUT_DIR": str(out)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not subprocess.run(["pgrep", "-f", str(out)], capture_output=True).stdout.split():  # its job file
            assert proc.poll() is None and time.monotonic() < deadline, "the converter never started"
            time.sleep(0.2)
        time.sleep(1)  # well inside onnx2tf (TensorFlow alone takes seconds to import)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, f"converter processes left running: {left}"


def test_a_step_with_a_fixed_batch_of_2_converts_and_checks_whole(converter, tmp_path):
    """A step whose input has a fixed batch of 2: its sample is the whole tensor (no axis cut to one
    sample), float32 and int8 alike."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(nodes, "fixed2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [w])
    path = tmp_path / "fixed2.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    for precision, tolerance in (("float32", 1e-4), ("int8", 0.15)):
        tfl, io = convert_step(path, tmp_path / precision, precision=precision, calibration={"x": x})
        assert check_step(path, tfl, io, [{"x": x}], tolerance * max(1.0, float(np.abs(x).sum()))) <= 0.5


def test_what_a_runtime_raises_in_the_check_is_a_conversion_error_naming_the_step(tiny):
    """onnxruntime's own error classes, LiteRT's RuntimeError and the runner's BundleError: each one
    paragraph naming the step and the runtime, so --format auto keeps such a step ONNX."""
    path, tfl, io = tiny["odd"]
    x = np.random.default_rng(0).standard_normal((1, 3, 10, 7)).astype(np.float32)
    cases = [
        (io, {"x": x.astype(np.float64)}, "running the ONNX step on onnxruntime"),  # onnxruntime's InvalidArgument
        ((TensorIO("x", "x0", ()), *io[1:]), {"x": x}, "running the TFLite step on LiteRT"),  # NCHW into an NHWC conv
        ((TensorIO("x", "nokey"), *io[1:]), {"x": x}, "loading the TFLite step on LiteRT"),  # BundleError
    ]
    for bad_io, feeds, doing in cases:
        with pytest.raises(ConversionError) as e:
            check_step(path, tfl, bad_io, [feeds], 1.0, step="stage1")
        assert e.value.step == "stage1" and str(e.value).startswith(f"Step stage1: {doing}"), str(e.value)
        assert "\n" not in str(e.value)


def test_unknown_precision_and_int8_without_samples_are_refused(tiny, tmp_path):
    path = tiny["cube"][0]
    with pytest.raises(ConversionError, match="precision"):
        convert_step(path, tmp_path, precision="bfloat16")
    with pytest.raises(ConversionError, match="calibration"):
        convert_step(path, tmp_path, precision="int8")


# -- the runner (edgepart.litert) ------------------------------------------------------------------------

def test_the_runner_is_ai_edge_litert():
    assert litert_runtime() == "ai-edge-litert"


def test_one_session_is_safe_from_several_threads(tiny):
    path, tfl, io = tiny["cube"]
    sess = make_tflite_session(tfl, io, threads=1)
    xs = [np.random.default_rng(i).standard_normal((1, 8, 8, 8)).astype(np.float32) for i in range(8)]
    want = [sess.run(["y"], {"x": x})[0] for x in xs]
    errors: list[str] = []

    def worker(k: int) -> None:
        for r in range(20):
            i = (k + r) % len(xs)
            if not np.array_equal(sess.run(["y"], {"x": xs[i]})[0], want[i]):
                errors.append(f"thread {k} round {r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)


def test_run_takes_none_for_every_output_and_keeps_0d_tensors(tiny):
    path, tfl, io = tiny["odd"]
    x = np.random.default_rng(1).standard_normal((1, 3, 10, 7)).astype(np.float32)
    y, m = make_tflite_session(tfl, io, threads=2).run(None, {"x": x})
    assert y.shape == (1, 5, 10, 7) and m.shape == () and abs(float(m) - float(x.mean())) < 1e-5


def test_a_file_that_is_not_tflite_is_a_bundle_error(tmp_path, tiny):
    bad = tmp_path / "stage1.tflite"
    bad.write_bytes(b"not a flatbuffer" * 64)
    for path in (bad, tmp_path / "missing.tflite"):
        with pytest.raises(BundleError, match=str(path)):
            make_tflite_session(path, tiny["cube"][2])


def test_a_device_without_litert_is_told_which_extra_to_install(tiny):
    """A Python where neither runtime imports (both blocked, as on a device without the extra)."""
    code = ("import sys; sys.modules['ai_edge_litert'] = sys.modules['tflite_runtime'] = None\n"
            "from edgepart.errors import MissingExtraError\n"
            "from edgepart.litert import litert_runtime, make_tflite_session\n"
            "assert litert_runtime() is None\n"
            f"try:\n    make_tflite_session({str(tiny['cube'][1])!r}, ())\n"
            "except MissingExtraError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'pip install "edgepart[litert]"' in out.stdout and "ai_edge_litert" in out.stdout


# -- the converter's environment ---------------------------------------------------------------------------

@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEPART_CACHE", str(tmp_path))
    return tmp_path


def test_a_failed_build_names_its_log_and_is_rebuilt_from_scratch(own_cache, monkeypatch):
    # pip with no index and no wheels: it really fails, at once, without the network
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(own_cache / "no-wheels"))
    with pytest.raises(ConversionError) as e:
        env.converter_env()
    log = own_cache / f"onnx2tf-{env.ONNX2TF_VERSION}.log"
    assert str(log) in str(e.value) and "pip install" in str(e.value) and log.is_file()
    assert not env.is_ready() and env.env_dir().is_dir()  # half-built: no stamp
    marker = env.env_dir() / "left-over"
    marker.write_text("")
    with pytest.raises(ConversionError):
        env.converter_env()
    assert not marker.exists()


def test_a_second_process_waits_for_the_first_and_builds_nothing(own_cache):
    lock = own_cache / f"onnx2tf-{env.ONNX2TF_VERSION}.lock"
    code = ("from edgepart.packager.tflite.env import converter_env; print(converter_env())")
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # "the first process", building
        waiter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "EDGEPART_CACHE": str(own_cache)})
        time.sleep(2.0)
        assert waiter.poll() is None  # waiting on the lock
        d = env.env_dir()  # what the first process leaves: a complete environment
        (d / "bin").mkdir(parents=True)
        (d / "bin" / "python").symlink_to(sys.executable)
        (d / env.STAMP).write_text(env._stamp_text())
        fcntl.flock(f, fcntl.LOCK_UN)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert out.strip() == str(d) and not (own_cache / f"onnx2tf-{env.ONNX2TF_VERSION}.log").exists()


def test_a_lock_held_too_long_is_an_error_not_a_hang(own_cache, monkeypatch):
    monkeypatch.setattr(env, "LOCK_WAIT_S", 1.0)
    with open(own_cache / f"onnx2tf-{env.ONNX2TF_VERSION}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(ConversionError, match="Another process"):
            env.converter_env()
        assert time.monotonic() - t0 < 10


def _castlike_pipeline(tmp_path: Path, runtime: str) -> tuple[Path, Path]:
    """A 2-stage model whose last stage holds CastLike (no onnx2tf converter), and its cluster."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("CastLike", ["c", "t"], ["y"])]
    g = helper.make_graph(nodes, "castlike2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4, 6, 5])],
                          [onnx.numpy_helper.from_array(np.zeros(1, np.float64), "t")])
    model = tmp_path / "castlike2.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(model))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(f"devices:\n  - {{name: a, gflops: 10, runtime: {runtime}}}\n"
                       f"  - {{name: b, gflops: 10, runtime: {runtime}}}\nlinks:\n  default: {{bandwidth_mbps: 1000}}\n")
    return model, cluster


def test_package_format_tflite_names_the_step_and_operator_and_auto_falls_back(converter, tmp_path):
    """`edgepart package --format tflite`: one clear error naming the step and the operator, the
    bundles left ONNX; `--format auto`: that step stays ONNX, the other converts, and it says why."""
    model, cluster = _castlike_pipeline(tmp_path, "tflite")
    r = subprocess.run([sys.executable, "-m", "edgepart", "package", str(model), "-c", str(cluster), "-o",
                        str(tmp_path / "dist"), "--format", "tflite", "--objective", "throughput"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    err = r.stderr.strip()
    assert err.startswith("error:") and "does not convert to TFLite" in err and "CastLike" in err, err
    assert "--format auto" in err and "stage" in err
    from edgepart.bundle import load_dist

    assert all(s.runtime == "onnx" for b in load_dist(tmp_path / "dist").values() for s in b.steps)

    r = subprocess.run([sys.executable, "-m", "edgepart", "package", str(model), "-c", str(cluster), "-o",
                        str(tmp_path / "dist2"), "--format", "auto", "--objective", "throughput", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    formats = {f["step"]: f for f in json.loads(r.stdout)["formats"]}
    assert sorted(f["runtime"] for f in formats.values()) == ["onnx", "tflite"], formats
    stays = next(f for f in formats.values() if f["runtime"] == "onnx")
    assert stays["stays_onnx_because"] == "operator CastLike"
    plan = next(iter(load_dist(tmp_path / "dist2").values())).plan
    assert {s.name: s.runtime for s in plan.steps} == {k: f["runtime"] for k, f in formats.items()}
