"""Replicas (every device holds the whole model, each request goes to one): streamed throughput on
2 devices against 1, measured side by side in one run (issue 11's goal: >= 1.8x).

    python bench/bench_replicas.py [--rounds 5] [--n 120] [--rule least-outstanding]

EfficientNet-Lite0 (ImageNet weights, 1x3x224x224). Every device is an `edgepart run` process
(AgentProcesses) with 1 thread, pinned to a core of its own: the 2-device plan's agents to cores 0
and 1, the 1-device plan's agent to core 1. The app is this process, pinned to core 0, streaming
`InferenceSession.submit` (all requests at once; the session keeps 128 in flight): on 2 cores it
shares core 0 with the first replica, while the single device's app has core 0 to itself, so the
ratio is conservative. Rounds alternate between the two so both see the same moments of the
machine; the figure is the median of the per-round ratios. Writes bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import image, save  # noqa: E402

from rich.console import Console  # noqa: E402

console = Console()


def _cluster(path: Path, names: list[str]) -> Path:
    doc = {"devices": [{"name": n, "gflops": 10, "memory_mb": 1024, "threads": 1} for n in names],
           "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=120, help="requests per stream")
    ap.add_argument("--rule", default="least-outstanding", choices=["least-outstanding", "round-robin"])
    args = ap.parse_args()

    import edgepart
    import edgepart.packager as p
    from edgepart.testing import zoo
    from edgepart.testing.emulate import AgentProcesses

    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("this benchmark needs 2 cores (one per replica)")
    model = zoo.efficientnet_lite0(progress=True)
    shapes = {"input": (1, 3, 224, 224)}
    tag = f"{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    two = p.package(model, _cluster(tmp / "c2.yaml", ["rep0", "rep1"]), out=tmp / "two", strategy="replicas",
                    input_shapes=shapes, rule=args.rule, model_name=f"replicas-{tag}")
    one = p.package(model, _cluster(tmp / "c1.yaml", ["solo"]), out=tmp / "one", input_shapes=shapes,
                    model_name=f"one-{tag}")
    x = image()
    os.sched_setaffinity(0, {0})
    procs2 = AgentProcesses(tmp / "two", interface="127.0.0.1", threads=1, cpus={"rep0": 0, "rep1": 1}).start()
    procs1 = AgentProcesses(tmp / "one", interface="127.0.0.1", threads=1, cpus={"solo": 1}).start()
    rounds: dict[str, list[float]] = {"one_tput": [], "two_tput": [], "ratio": []}
    try:
        procs2.wait_ready(60)
        procs1.wait_ready(60)
        s2 = edgepart.InferenceSession(tmp / "two", interface="127.0.0.1", timeout_s=60)
        s1 = edgepart.InferenceSession(tmp / "one", interface="127.0.0.1", timeout_s=60)

        def stream(sess) -> float:
            t0 = time.perf_counter()
            futs = [sess.submit({"input": x}) for _ in range(args.n)]
            for f in futs:
                f.result(120)
            return args.n / (time.perf_counter() - t0)

        for s in (s1, s2):  # warm-up
            stream(s)
        for r in range(args.rounds):
            a, b = stream(s1), stream(s2)
            rounds["one_tput"].append(a)
            rounds["two_tput"].append(b)
            rounds["ratio"].append(b / a)
            console.print(f"round {r}: one device {a:.1f} img/s, two replicas {b:.1f} img/s, {b / a:.2f}x")
        picks = dict(s2._client.chooser.picks)
        s1.close()
        s2.close()
    finally:
        procs2.stop()
        procs1.stop()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 2)))
    ratio = statistics.median(rounds["ratio"])
    res = {"model": "efficientnet-lite0", "rule": args.rule, "n": args.n, "one_tput": statistics.median(rounds["one_tput"]),
           "two_tput": statistics.median(rounds["two_tput"]), "ratio": ratio, "worst_ratio": min(rounds["ratio"]),
           "picks": picks, "rounds": rounds, "goal": 1.8}
    console.print(f"[bold]replicas on 2 devices: {res['two_tput']:.1f} img/s against {res['one_tput']:.1f} on one: "
                  f"{ratio:.2f}x (worst round {res['worst_ratio']:.2f}x; goal >= 1.8x); requests per device {picks}[/]")
    console.print(f"wrote {save('replicas', res)}")


if __name__ == "__main__":
    main()
