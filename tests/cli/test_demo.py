"""`edgepart demo`, run for real (the reference model, agent processes, mDNS on loopback), small: what
it prints at 80 columns, section by section. The figures themselves are not judged here (the
machine is shared and noisy); that they are there and well formed is."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.models


def _our_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (the demo's workdir)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(f"{pid} {cmd}")
    return out


@pytest.fixture(scope="module")
def demo(efficientnet_lite0_path, tmp_path_factory):
    """One small run of `edgepart demo` at 80 columns: (exit code, output, workdir)."""
    wd = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "COLUMNS": "80", "LINES": "50", "TERM": "dumb"}
    env.pop("NO_COLOR", None)
    res = subprocess.run([sys.executable, "-m", "edgepart", "demo", "--images", "8", "--stream", "24",
                          "--workdir", str(wd)], capture_output=True, text=True, timeout=300, env=env)
    return res.returncode, res.stdout + res.stderr, wd


def test_demo_runs_and_fits_80_columns(demo):
    code, out, _ = demo
    assert code == 0, out
    long = [ln for ln in out.splitlines() if len(ln) > 80]
    assert not long, "lines wider than 80 columns:\n" + "\n".join(long)
    assert "…" not in out, f"a field was cut:\n{out}"
    assert "Traceback" not in out


def test_demo_calibrates_before_planning(demo):
    _, out, wd = demo
    cal = re.search(r"calibrated one device: ([\d.]+) ms per image → ([\d.]+) GFLOP/s \((\d+) runs, cores? [\d, –]+\)",
                    out)
    assert cal and float(cal[1]) > 0 and float(cal[2]) > 0 and int(cal[3]) >= 15, out
    # the model takes camera frames: uint8, a quarter of float32's bytes on the wire
    assert re.search(r"input: a camera frame, 224×224 RGB uint8 \(151 kB\), normalised by the model", out), out
    assert re.search(r"calibrated loopback link: [\d,]+ Mbit/s, [\d.]+ ms", out), out
    # the cluster the planner read holds the measured speed, not made-up ones
    written = yaml.safe_load((wd / "cluster.yaml").read_text())
    assert [d["name"] for d in written["devices"]] == ["device-a", "device-b"]
    assert all(abs(d["gflops"] - float(cal[2])) <= 0.051 for d in written["devices"]), (written, cal[0])
    assert written["links"]["default"]["bandwidth_mbps"] > 0
    # the plan puts each stage's estimate beside its time measured alone
    assert re.search(r"plan [0-9a-f]{8}, objective throughput", out), out
    for head in ("stage", "device", "layers", "MFLOP", "sends", "est. ms", "alone ms"):
        assert head in out
    assert len(re.findall(r"│\s+\d │ device-[ab] │ \d+–\d+\s+│", out)) == 2, out
    assert re.search(r"planner's estimate: [\d.]+ ms per image end to end", out), out


def test_demo_answers_with_class_names(demo):
    _, out, _ = demo
    assert "answers, first 8 of 8 photos" in out
    # scikit-learn's two photos: a temple (ImageNet's "palace") and a flower ("daisy")
    assert re.search(r"│ 0 │ palace\s+│\s+\d+% │ same\s+│", out), out
    assert re.search(r"│ 1 │ daisy\s+│\s+\d+% │ same\s+│", out), out
    assert re.search(r"same answers: 8/8 top-1 classes as one onnxruntime session, max diff [\d.]+e-\d+", out), out


def test_demo_compares_like_with_like(demo):
    _, out, _ = demo
    n = len(os.sched_getaffinity(0))  # the cores the demo may use (one under taskset -c 0)
    for setup, cores in (("one device", 1), ("2-device cluster", min(2, n)), ("whole machine¹", n)):
        assert re.search(rf"│ {re.escape(setup)}\s+│\s+{cores} │\s+[\d.]+ ms │\s+\d+ img/s │", out), (setup, out)
    speedup = re.search(r"throughput, cluster / one device: ([\d.]+)x \(goal ≥ 1\.7x: (met|missed)\)", out)
    est = re.search(r"latency, estimate / measured: ([\d.]+) \(([\d.]+) / ([\d.]+) ms; goal within 1\.5x: (met|missed)\)",
                    out)
    assert speedup and est, out
    assert float(speedup[1]) > 0 and float(est[1]) > 0
    assert abs(float(est[2]) / float(est[3]) - float(est[1])) < 0.02
    last = " ".join(out.split("same answers:")[1].split("\n", 1)[1].split())  # the closing sentence, unwrapped
    assert re.search(r"A second device adds [\d.]+x throughput \(\d+ → \d+ img/s\) and (costs|saves) [\d.]+ ms "
                     r"of latency per image\.", last), last


def test_demo_leaves_no_agent_running(demo):
    _, _, wd = demo
    end = time.monotonic() + 10
    while _our_processes(str(wd)) and time.monotonic() < end:
        time.sleep(0.2)
    assert not _our_processes(str(wd))


def test_demo_refuses_an_unknown_objective_before_any_work():
    from cli_helpers import assert_clean_error, invoke

    assert_clean_error(invoke("demo", "--objective", "fast"), "Unknown objective 'fast'", "throughput")


def test_demo_from_a_wheel_install_says_to_run_it_from_a_checkout():
    """`pip install edgepart` has no edgepart.testing (the harnesses and the zoo are not in the wheel):
    the demo says where it runs instead of failing with an ImportError."""
    code = ("import sys; sys.modules['edgepart.testing'] = None\n"  # what Python does for a package that is not there
            "from edgepart.cli import main\n"
            "sys.argv = ['edgepart', 'demo']\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert err.startswith("error:") and "source checkout" in err and "make demo" in err, err
