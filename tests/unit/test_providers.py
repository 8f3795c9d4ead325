"""Execution providers (docs/agents.md, "Execution providers"): the auto order over what onnxruntime
really reports, a cluster's preference kept, a provider asked for by name that this build lacks
refused at start with what to install, a provider that onnxruntime leaves out of a session refused
under a list and said under auto, the plan's providers alone for `verify`, and the options each
provider gets (TensorRT's engine cache where the bundle is read-only included)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepart import ProviderError
from edgepart.local import LocalCluster
from edgepart.runtime import (AUTO_ORDER, CPU, CUDA, TENSORRT, XNNPACK, Providers, choose, make_session,
                              parse_providers, plan_providers)

import graphs

pytestmark = pytest.mark.timeout(120)

AVAILABLE = ort.get_available_providers()  # this build's, as onnxruntime reports them
ALL = ort.get_all_providers()  # every provider onnxruntime knows of, in any build
# a provider onnxruntime knows and this build lacks: asked for, onnxruntime leaves it out of the
# session and runs on CPU without an error, as it does where a GPU provider's libraries fail to load
ABSENT = next(p for p in (CUDA, TENSORRT, "MIGraphXExecutionProvider", "ROCMExecutionProvider") if p not in AVAILABLE)


def test_auto_on_this_build_takes_the_fastest_it_has_and_ends_with_cpu():
    p = choose("auto", (), AVAILABLE)
    assert p.names[-1] == CPU and p.source == "auto"
    assert list(p.names) == [n for n in AUTO_ORDER if n in AVAILABLE]
    assert "AzureExecutionProvider" not in p.names  # offered by the plain build, never a compute provider


@pytest.mark.parametrize("offered", [
    ALL,  # a build with everything: TensorRT first
    [n for n in ALL if n != TENSORRT],  # onnxruntime-gpu without TensorRT: CUDA first
    [XNNPACK, "AzureExecutionProvider", CPU],  # an Android/Pi build
    [CPU],
])
def test_auto_order_over_builds_onnxruntime_names(offered):
    assert set(offered) <= set(ALL), "only provider names onnxruntime really has"
    names = choose("auto", (), offered).names
    want = [n for n in (TENSORRT, CUDA, XNNPACK) if n in offered] + [CPU]
    assert list(names) == want


def test_cluster_preference_is_kept_under_auto_and_missing_ones_are_skipped():
    p = choose("auto", (CUDA, XNNPACK, CPU), [XNNPACK, CUDA, CPU])
    assert p.names == (CUDA, XNNPACK, CPU) and p.source == "cluster.yaml"
    p = choose("auto", (CUDA, CPU), AVAILABLE)  # this build has no CUDA: skipped, CPU stays
    assert p.names == tuple(n for n in (CUDA,) if n in AVAILABLE) + (CPU,)


def test_a_missing_provider_asked_by_name_names_what_to_install():
    for asked, needle in (("cuda", "onnxruntime-gpu"), ("tensorrt,cpu", "TensorRT"), ("xnnpack", "--use_xnnpack")):
        first = parse_providers(asked)[0]
        if first in AVAILABLE:
            continue  # this build has it (a GPU machine): nothing to refuse
        with pytest.raises(ProviderError, match=needle) as e:
            choose(asked, (), AVAILABLE)
        assert "--providers auto" in str(e.value)


def test_names_short_and_full_and_unknown():
    assert parse_providers("CUDA, cpu") == (CUDA, CPU)
    assert parse_providers(["TensorrtExecutionProvider"]) == (TENSORRT,)
    assert parse_providers("auto") == parse_providers("") == ("auto",)
    with pytest.raises(ProviderError, match="not a provider edgepart knows.*tensorrt, trt, cuda"):
        parse_providers("gpu")
    with pytest.raises(ProviderError, match="not a provider"):
        parse_providers("cuda,auto")
    assert choose("cpu", (), AVAILABLE).names == (CPU,)


def test_tensorrt_gets_an_engine_cache_beside_the_bundle_and_no_fp16_unless_asked(tmp_path):
    p = choose("tensorrt", (), [TENSORRT, CUDA, CPU], cache_dir=tmp_path / "dev0" / ".cache", device_id=1)
    names, opts = p.for_onnxruntime()
    assert names == [TENSORRT, CPU]
    trt = opts[0]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == "False"
    assert Path(trt["trt_engine_cache_path"]) == tmp_path / "dev0" / ".cache" / "tensorrt"
    assert trt["device_id"] == "1" and opts[1] == {}
    assert choose("tensorrt", (), [TENSORRT, CPU], fp16=True).for_onnxruntime()[1][0]["trt_fp16_enable"] == "True"
    assert choose("cuda", (), [CUDA, CPU], device_id=2).for_onnxruntime()[1][0] == {"device_id": "2"}
    assert choose("xnnpack", (), [XNNPACK, CPU], threads=3).for_onnxruntime()[1][0] == {"intra_op_num_threads": "3"}


def test_a_session_made_with_the_auto_choice_runs(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.residual(), str(path))
    sess = make_session(path, choose("auto", (), AVAILABLE), threads=1)
    assert sess.get_providers()[-1] == CPU
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    ref = ort.InferenceSession(str(path), providers=[CPU]).run(None, feeds)
    for a, b in zip(sess.run(None, feeds), ref):
        np.testing.assert_array_equal(a, b)


def test_edgepart_run_with_a_missing_provider_stops_at_start_with_what_to_install(tmp_path):
    if CUDA in AVAILABLE:
        pytest.skip("this onnxruntime build has CUDA: nothing to refuse")  # a GPU machine; CI has none
    from edgepart.packager import package

    model = tmp_path / "m.onnx"
    onnx.save(graphs.residual(), str(model))
    (tmp_path / "c.yaml").write_text("devices:\n  - {name: a, gflops: 10}\n  - {name: b, gflops: 10}\n"
                                     "links:\n  default: {bandwidth_mbps: 1000, latency_ms: 0.1}\n")
    package(model, tmp_path / "c.yaml", out=tmp_path / "dist")
    r = subprocess.run([sys.executable, "-m", "edgepart", "run", str(tmp_path / "dist" / "a"), "--interface",
                        "127.0.0.1", "--providers", "cuda"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "onnxruntime-gpu" in r.stderr, r.stderr
    assert "edgepart-agent device=" not in r.stdout, "it must stop before it serves"


def _model(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.residual(), str(path))
    return path


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own word, a Python warning only
def test_a_provider_the_session_did_not_get_is_a_provider_error_under_a_list(tmp_path):
    """onnxruntime itself says nothing (a warning at most) and runs on CPU: edgepart compares."""
    path = _model(tmp_path)
    short = ABSENT.removesuffix("ExecutionProvider")
    assert ort.InferenceSession(str(path), providers=[ABSENT, CPU]).get_providers() == [CPU], \
        "onnxruntime falls back by itself: the case this test is about"
    with pytest.raises(ProviderError, match=f"--providers asks for {short}.*did not start.*--providers auto") as e:
        make_session(path, Providers((ABSENT, CPU), ((), ()), "--providers"))
    assert str(path) in str(e.value)


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_provider_the_session_did_not_get_is_a_warning_under_auto_and_the_session_runs(tmp_path, caplog):
    path = _model(tmp_path)
    with caplog.at_level(logging.WARNING, "edgepart"):
        sess = make_session(path, Providers((ABSENT, CPU), ((), ()), "auto"))
        make_session(path, Providers((ABSENT, CPU), ((), ()), "cluster.yaml"))  # said once per folder
    assert sess.get_providers() == [CPU]
    said = [r for r in caplog.records if "did not start" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert ABSENT.removesuffix("ExecutionProvider") in said[0].getMessage()
    # what the agent then reports: the providers its sessions really got
    got = Providers((ABSENT, CPU), ((("device_id", "0"),), ()), "auto").started(sess.get_providers())
    assert got.names == (CPU,) and got.options == ((),) and got.source == "auto"


def test_the_plans_providers_alone_never_an_accelerator_it_did_not_name():
    """`verify` and reports (LocalCluster) run what the plan says: CPU where it names nothing else,
    even on a build that offers every accelerator (where auto would take TensorRT)."""
    assert choose("auto", (CPU,), ALL).names[0] == TENSORRT, "auto would reach for the accelerator"
    assert plan_providers((CPU,), ALL).names == (CPU,)
    assert plan_providers((), ALL).names == (CPU,)
    assert plan_providers((CUDA, CPU), ALL).names == (CUDA, CPU)
    assert plan_providers(("cuda",), ALL).names == (CUDA, CPU), "a short name, as an older bundle may hold"
    assert plan_providers((CUDA, CPU), [CPU]).names == (CPU,), "one this build lacks is skipped"
    assert plan_providers((CPU,)).source == "plan"


def test_local_cluster_runs_each_device_on_its_plans_providers(tmp_path):
    from edgepart.packager import package

    model = _model(tmp_path)
    (tmp_path / "c.yaml").write_text("devices:\n  - {name: a, gflops: 10, providers: [cuda, cpu]}\n"
                                     "  - {name: b, gflops: 10}\n"
                                     "links:\n  default: {bandwidth_mbps: 1000, latency_ms: 0.1}\n")
    package(model, tmp_path / "c.yaml", out=tmp_path / "dist")
    lc = LocalCluster.from_dist(tmp_path / "dist")
    assert lc.providers["b"].names == (CPU,)
    assert lc.providers["a"].names == tuple(p for p in (CUDA,) if p in AVAILABLE) + (CPU,)
    for st in lc.plan.steps:
        assert lc.sessions[st.name].get_providers() == list(lc.providers[st.device].names)
    sess = ort.InferenceSession(str(model), providers=[CPU])
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    for a, b in zip(lc.run(feeds).values(), sess.run(None, feeds)):
        np.testing.assert_allclose(a, b, atol=1e-5)  # exact on CPU; device a may run CUDA where there is one


def test_tensorrt_engines_go_under_home_where_the_bundle_folder_cannot_be_written(tmp_path, monkeypatch, caplog):
    """A read-only bundle (here its `.cache` is a file, so no folder can be made there: the same
    OSError a read-only mount gives, which root, running the tests, would not get from a mode)."""
    bundle = tmp_path / "dev0"
    bundle.mkdir()
    (bundle / ".cache").write_text("not a folder")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with caplog.at_level(logging.WARNING, "edgepart"):
        opts = choose("tensorrt", (), [TENSORRT, CPU], cache_dir=bundle / ".cache").for_onnxruntime()[1][0]
    trt = Path(opts["trt_engine_cache_path"])
    assert trt.is_dir() and trt.is_relative_to(tmp_path / "home" / ".cache" / "edgepart" / "tensorrt")
    assert opts["trt_timing_cache_path"] == str(trt) and opts["trt_engine_cache_enable"] == "True"
    assert "cannot keep its engines" in caplog.text and str(trt) in caplog.text
    # the same bundle gets the same folder on its next start (its engines are reused)
    again = choose("tensorrt", (), [TENSORRT, CPU], cache_dir=bundle / ".cache").for_onnxruntime()[1][0]
    assert again["trt_engine_cache_path"] == str(trt)
    # and where no folder can be made at all: no cache, said, and no traceback
    (tmp_path / "home2").mkdir()
    (tmp_path / "home2" / ".cache").write_text("not a folder either")
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "edgepart"):
        opts = choose("tensorrt", (), [TENSORRT, CPU], cache_dir=bundle / ".cache").for_onnxruntime()[1][0]
    assert "trt_engine_cache_path" not in opts and "trt_engine_cache_enable" not in opts
    assert "no engine cache" in caplog.text
