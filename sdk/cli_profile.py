"""`edgepart profile`: measure this device on the runtime it will use (registered on `edgepart.cli.app`;
docs/profile.md)."""

from __future__ import annotations

import asyncio
import statistics
import time
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
    peer: Optional[list[str]] = typer.Option(None, "--peer", help="A running agent's HOST:PORT to measure the round trip and bandwidth to. Repeatable. Agents of a plan answer only its keys: give --bundle (this device's, which holds its key), or the agents run --insecure."),
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
            if bundle is None and model is None:  # the same layers on LiteRT, where it is installed
                p = _litert_figures(p, n_threads, seconds, lambda s: pr.update(task, description=s))
            if peer:
                pr.update(task, description="round trips and bandwidth to peers")
                creds = None
                if bundle is not None and b.keys.secure:  # this device's key: its peers accept it
                    from .keys import Credentials

                    creds = Credentials(b.device_keypair(), b.keys)
                p = _with_peers(p, list(peer), b.plan_id if bundle is not None else "@profile", creds)
        try:
            out.write_text(p.to_yaml())
        except OSError as e:
            raise BundleError(f"Cannot write the profile to {out}: {e.strerror or e}. "
                              f"Give --out a path in a folder this user may write to.") from None
        console.print(f"[bold]{p.device}[/]: {p.gflops:.2f} GFLOP/s on {source} ({p.runtime}, "
                      f"{', '.join(p.providers)}, {p.threads} thread(s)), {p.memory_available_mb:,.0f} MB available")
        tfl = dict(p.tflite_speeds)
        for k, v in p.speeds:
            console.print(f"  {k:<10} {v:8.2f} GFLOP/s" + (f"   LiteRT {tfl[k]:8.2f}" if k in tfl else ""))
        if p.tflite_gflops is not None:
            pick = "TFLite (LiteRT)" if p.prefers_tflite else "ONNX (onnxruntime)"
            console.print(f"  on {p.litert}: {p.tflite_gflops:.2f} GFLOP/s on the same layers: `--format auto` gives this "
                          f"device {pick} unless cluster.yaml sets its `runtime`")
        for why in p.skipped:
            err_console.print(f"[yellow]not timed[/] {why}", soft_wrap=True)
        for q in p.peers:
            bw = f"{q.bandwidth_mbps:,.0f} Mbit/s" if q.bandwidth_mbps else "bandwidth not measured"
            console.print(f"  peer {q.device} ({q.endpoint}): round trip {q.rtt_ms:.3f} ms, {bw}")
        console.print(f"profile written to [bold]{out}[/]; in cluster.yaml: `- {{name: {p.device}, profile: {out.name}}}`")

    _run(body)


def time_tflite(path, io, feeds: dict, threads: int, seconds: float) -> float:
    """The median ms of one TFLite file on LiteRT (`io`: its tensors' map to the signature; `feeds` in
    the plan's layout), after a warm-up run, over at least 5 runs and about `seconds`."""
    from .litert import make_tflite_session

    sess = make_tflite_session(path, io, threads)
    sess.run(None, feeds)
    ts, end = [], time.perf_counter() + seconds
    while len(ts) < 5 or time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def _tflite_timer(b, steps, threads: int, seconds: float):
    import numpy as np

    def run(name: str) -> float:
        st = steps[name]
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(i.dtype)
                 for i in st.inputs}
        return time_tflite(b.file(st.model_file), st.io, feeds, threads, seconds)

    return run


def _litert_figures(p, threads: int, seconds: float, progress):
    """The representative set's TFLite twins timed on LiteRT where it is installed (docs/profile.md,
    "LiteRT"): `p` with the LiteRT found and its speeds; `p` as it was where there is none."""
    import numpy as np
    import onnxruntime as ort

    from .litert import litert_runtime
    from .profile import representative_tflite, with_litert

    pkg = litert_runtime()
    twins = representative_tflite()
    if pkg is None or not twins:
        return p
    try:
        from importlib.metadata import version

        found = f"{pkg} {version(pkg)}"
    except Exception:  # noqa: BLE001 - a version we cannot read does not stop the profile
        found = pkg
    onnx_ms, tflite_ms = dict(p.steps_ms), {}
    for name, path, io in twins:
        progress(f"timing {name} on LiteRT")
        src = path.with_suffix(".onnx")
        sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
                 for i in sess.get_inputs()}
        tflite_ms[name] = time_tflite(path, io, feeds, threads, seconds / max(1, len(twins)))
    return with_litert(p, onnx_ms, tflite_ms, found)


# A ping's payload grows from 256 KiB by 4x until it adds this much time over an empty ping (or
# reaches MAX_PROBE_BYTES): long enough to time a link's bandwidth, short on a slow one (docs/profile.md)
PROBE_MS = 20.0
MAX_PROBE_BYTES = 16 << 20


async def link_figures(endpoint: str, plan_id: str, pings: int = 10, timeout_s: float = 1.0,
                       credentials=None) -> tuple[str, list[float], float | None]:
    """(the peer's device name, `pings` round trips in ms, bandwidth in Mbit/s or None) over one
    connection, opened by an untimed first ping. Bandwidth: an agent answers a ping whatever frames
    follow its header, so a ping carrying N bytes takes N / bandwidth longer than an empty one (the
    pong is small). Fewer figures, or none, where the agent stops answering. `credentials` (this
    device's keys, from its bundle) for encrypted agents: which device listens at `endpoint` is not
    known, so each device's key of the plan is tried in turn (docs/agents.md, "Encryption")."""
    import zmq
    import zmq.asyncio

    from edgepart.agent.net.link import secure_client

    from .wire import Header, decode

    ctx = zmq.asyncio.Context()
    roles = [""] if credentials is None or not credentials.secure else sorted(credentials.keys.devices)
    s = None
    name, rtts, mbps = "", [], None

    def open_as(role: str):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if role:
            secure_client(sock, credentials, role)
        sock.connect(endpoint)
        return sock

    async def ping(payload: bytes | None, wait_s: float) -> float:
        nonlocal name
        t0 = time.perf_counter()
        await s.send_multipart([Header("ping", plan_id, "@discover").encode(), *([payload] if payload else [])])
        h, _ = decode(await asyncio.wait_for(s.recv_multipart(), wait_s))
        if h.kind != "pong":
            raise ValueError(f"answered {h.kind}")
        name = h.sender
        return (time.perf_counter() - t0) * 1e3

    try:
        for role in roles:  # the first ping, untimed, finds the key the agent there holds
            s = open_as(role)
            try:
                await ping(None, timeout_s)
                break
            except Exception:
                s.close(0)
                s = None
        if s is None:
            return name, rtts, mbps
        for _ in range(pings):
            rtts.append(await ping(None, timeout_s))
        base, size = statistics.median(rtts), 256 << 10
        while True:
            payload = bytes(size)
            extra = statistics.median([await ping(payload, timeout_s + size * 8 / 1e6) for _ in range(3)]) - base
            if extra >= PROBE_MS or size >= MAX_PROBE_BYTES:
                break
            size *= 4
        mbps = size * 8 / 1e6 / (extra / 1e3) if extra > 0 else None
    except Exception:  # unreachable, garbage, timeout: what was measured stands
        pass
    finally:
        if s is not None:
            s.close(0)
        ctx.term()
    return name, rtts, mbps


def _with_peers(p, peers: list[str], plan_id: str, credentials=None):
    import dataclasses

    from .profile import PeerLink

    found = []
    for hp in peers:
        ep = hp if hp.startswith("tcp://") else f"tcp://{hp}"
        name, rtts, mbps = asyncio.run(link_figures(ep, plan_id, credentials=credentials))
        if not rtts:
            err_console.print(f"[yellow]peer {hp} did not answer: not in the profile[/]")
        elif any(q.device == name for q in found):
            err_console.print(f"[yellow]peer {hp} is {name} again: measured once[/]")
        else:
            found.append(PeerLink(name, ep, statistics.median(rtts), mbps))
    return dataclasses.replace(p, peers=tuple(found))
