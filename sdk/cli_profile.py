"""`edgepart profile`: measure this device on the runtime it will use (registered on `edgepart.cli.app`;
docs/profile.md)."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Optional

import typer

from ._cli import app, console, err_console
from ._cli import run as _run
from .errors import BundleError


@app.command("profile")
def profile_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="The profile to write (YAML); name it in cluster.yaml as this device's `profile:`."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Time this device's own steps (dist/<device>): the speeds come from the model's own operator mix."),
    model: Optional[Path] = typer.Option(None, "--model", help="Time this ONNX model (fixed input sizes) instead: the whole model on this device."),
    peer: Optional[list[str]] = typer.Option(None, "--peer", help="A running agent's HOST:PORT to measure the round trip to. Repeatable."),
    providers: str = typer.Option("auto", "--providers", help="As for `edgepart run`: what runs the ONNX steps."),
    threads: int = typer.Option(0, "--threads", help="As for `edgepart run`: 0 is the cores this process may use."),
    seconds: float = typer.Option(3.0, "--seconds", min=0.1, help="How long to time, in all."),
    name: str = typer.Option("", "--name", help="The device's name in the profile (default: the bundle's device, else the host name)."),
) -> None:
    """Measure this device: speed per operator kind on the runtime it will use (its own steps with
    --bundle, a model with --model, otherwise a representative set shipped with edgepart), memory
    available, and round trips to peers; write a profile for cluster.yaml."""

    def body():
        from rich.progress import Progress, SpinnerColumn, TextColumn

        from .profile import measure, representative_set
        from .runtime import choose, session_threads

        if bundle is not None and model is not None:
            raise BundleError("Give --bundle or --model, not both.")
        n_threads, _ = session_threads(threads)
        device = name
        tflite = None
        if bundle is not None:
            from .bundle import load_bundle

            b = load_bundle(bundle)
            device = device or b.device
            spec = next((d.providers for d in b.plan.devices if d.name == b.device), ())
            prov = choose(providers, spec, threads=n_threads)
            files = [(s.name, b.file(s.model_file)) for s in b.steps]
            source = f"bundle {b.device} of plan {b.plan_id}"
            tfl = {s.name: s for s in b.steps if s.runtime == "tflite"}
            if tfl:
                tflite = _tflite_timer(b, tfl, n_threads, seconds / max(1, len(files)))
        elif model is not None:
            if not model.is_file():
                raise BundleError(f"{model} does not exist.")
            prov, files, source = choose(providers, threads=n_threads), [(model.stem, model)], f"model {model.name}"
        else:
            prov, files, source = choose(providers, threads=n_threads), representative_set(), "representative set"
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True) as pr:
            task = pr.add_task("profiling", total=None)
            p = measure(files, providers=prov, threads=n_threads, seconds=seconds, device=device, source=source,
                        progress=lambda s: pr.update(task, description=s), tflite=tflite)
            if peer:
                pr.update(task, description="round trips to peers")
                p = _with_peers(p, list(peer), b.plan_id if bundle is not None else "@profile")
        try:
            out.write_text(p.to_yaml())
        except OSError as e:
            raise BundleError(f"Cannot write the profile to {out}: {e.strerror or e}. "
                              f"Give --out a path in a folder this user may write to.") from None
        console.print(f"[bold]{p.device}[/]: {p.gflops:.2f} GFLOP/s on {source} ({p.runtime}, "
                      f"{', '.join(p.providers)}, {p.threads} thread(s)), {p.memory_available_mb:,.0f} MB available")
        for k, v in p.speeds:
            console.print(f"  {k:<10} {v:8.2f} GFLOP/s")
        for why in p.skipped:
            err_console.print(f"[yellow]not timed[/] {why}", soft_wrap=True)
        for k, v in p.peers:
            console.print(f"  peer {k}: round trip {v:.3f} ms")
        console.print(f"profile written to [bold]{out}[/]; in cluster.yaml: `- {{name: {p.device}, profile: {out.name}}}`")

    _run(body)


def _tflite_timer(b, steps, threads: int, seconds: float):
    import time

    import numpy as np

    from .litert import make_tflite_session

    def run(name: str) -> float:
        st = steps[name]
        sess = make_tflite_session(b.file(st.model_file), st.io, threads)
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(i.dtype)
                 for i in st.inputs}
        sess.run(None, feeds)
        ts, end = [], time.perf_counter() + seconds
        while len(ts) < 5 or time.perf_counter() < end:
            t = time.perf_counter()
            sess.run(None, feeds)
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    return run


def _with_peers(p, peers: list[str], plan_id: str):
    import dataclasses

    from .cli_cluster import _round_trips

    async def rtts(endpoint: str) -> float | None:
        got = await _round_trips(endpoint, plan_id, 10)
        return statistics.median(got) if got else None

    found = []
    for hp in peers:
        ep = hp if hp.startswith("tcp://") else f"tcp://{hp}"
        ms = asyncio.run(rtts(ep))
        if ms is None:
            err_console.print(f"[yellow]peer {hp} did not answer: not in the profile[/]")
        else:
            found.append((hp, ms))
    return dataclasses.replace(p, peers=tuple(found))
