"""CLI commands for the running cluster: `run`, `discover`, `infer` (registered on `edgepart.cli.app`)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._cli import app, console, err_console
from ._cli import run as _run
from .errors import PeerError

InterfaceOpt = typer.Option(None, "--interface", "-i", help="IP address of the network interface to use for mDNS and ZeroMQ (for example 192.168.1.20); 127.0.0.1 keeps a whole cluster on loopback. Default: all interfaces.")
PeerOpt = typer.Option(None, "--peer", help="A peer agent's HOST:PORT, for networks where multicast (mDNS) is blocked. Repeatable.")
KeyOpt = typer.Option(None, "--key", help="The client key to talk to the cluster with (default: app.key beside the bundles, as `edgepart package` writes it; `edgepart keys add-client` makes others).")
InsecureOpt = typer.Option(False, "--insecure", help="Plaintext, unauthenticated links, for agents started with --insecure (bundles packaged with --insecure need it). Only on a network you trust completely.")


@app.command("run")
def run_cmd(
    bundle: Path = typer.Argument(..., help="This device's folder (dist/<device>), copied from the workstation: its bundle and, where the cluster has standby devices, its bundles of the fallback plans (dist/<device>/fallback/), all served at once. A standby device's folder holds only fallbacks. docs/failover.md."),
    interface: Optional[str] = InterfaceOpt,
    port: int = typer.Option(0, "--port", "-p", help="TCP port for ZeroMQ; 0 picks a free one (announced over mDNS). Give a fixed port when peers use --peer. The fallback plans a folder also holds listen on the ports after it, in order."),
    peer: Optional[list[str]] = PeerOpt,
    threads: int = typer.Option(0, "--threads", help="onnxruntime threads for this device's steps, one pool shared by all of them; 0: the cores this process may use (its CPU affinity and cgroup CPU quota), or the device's `threads` in cluster.yaml."),
    providers: str = typer.Option("auto", "--providers", help="What runs the ONNX steps: auto (the default) takes, of what this onnxruntime build has, TensorRT, then CUDA, then ACL, then XNNPACK, then CPU, unless cluster.yaml names this device's providers; or a comma-separated list (tensorrt, cuda, acl, xnnpack, openvino, coreml, cpu, ...), each of which must be in this build. CPU is always the last fallback."),
    gpu: int = typer.Option(0, "--gpu", help="The GPU the CUDA or TensorRT provider uses (its device id)."),
    fp16: bool = typer.Option(False, "--fp16", help="Let TensorRT build float16 engines: faster on a Jetson, answers no longer bit-equal to the model's."),
    ready_timeout_s: float = typer.Option(0.0, "--ready-timeout-s", help="Exit with an error if the peers this device sends to are not all found within this many seconds; 0 waits forever."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every link change and dropped message."),
    insecure: bool = typer.Option(False, "--insecure", help="Serve plaintext, unauthenticated links: any process on the network may talk to this agent. Needed for bundles packaged with --insecure; peers and sessions must say --insecure too. docs/agents.md, \"Encryption\"."),
    inflight_mb: int = typer.Option(1024, "--inflight-mb", min=1, help="MiB of received tensors this agent holds for requests in flight; past it (or past 3/4 of it from one sender) requests are turned away as busy. docs/agents.md, \"Admission\"."),
) -> None:
    """Serve this device's part of the plan: announce it, find the peers, execute requests until Ctrl-C.
    Its fallback plans (standby devices, docs/failover.md) are served warm beside it.
    Links are encrypted and authenticated with the plan's keys (CURVE) unless --insecure."""

    def body():
        from edgepart.agent.device.heap import keep_large_buffers
        from edgepart.agent.device.standby import DeviceAgents, load_folder

        logging.getLogger("edgepart").setLevel(logging.DEBUG if verbose else logging.INFO)
        keep_large_buffers()  # tensors arrive by the megabyte: no page faults per message
        # the primary plan's bundle and, warm beside it, the fallback plans' (docs/failover.md)
        served = load_folder(bundle)
        device = served[0].bundle.device

        async def main():
            agents = await DeviceAgents(served, interface=interface, port=port, peers=tuple(peer or ()),
                                        threads=threads, shared_pool=True, providers=providers, device_id=gpu,
                                        fp16=fp16, insecure=insecure, inflight_mb=inflight_mb).start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            # one machine-readable line per plan served, for scripts and the test harness (the
            # endpoint stays last: scripts take the rest of the line); the first is `edgepart-agent
            # device=...`, the primary plan's where there is one, the others `edgepart-agent also ...`
            for i, (s, core) in enumerate(zip(served, agents.cores)):
                serves = f" fallback-for={s.without}" if s.without else ""
                print(f"edgepart-agent {'also ' if i else ''}device={device} plan={core.plan.plan_id} "
                      f"threads={core.threads} runtime={'+'.join(core.runtimes)} "
                      f"providers={','.join(core.providers.short)} "
                      f"links={'curve' if core.credentials.secure else 'PLAINTEXT'}{serves} endpoint={core.endpoint}",
                      flush=True)
            try:
                waited = 0.0
                essential = agents.essential()  # the primary plan's core (a standby device's: all)
                while not stop.is_set():
                    missing = agents.missing(essential)
                    if not missing:
                        print(f"edgepart-agent ready device={device}", flush=True)
                        break
                    if ready_timeout_s and waited >= ready_timeout_s:
                        raise PeerError(
                            f"{device} did not find "
                            + "; ".join(f"{', '.join(sorted(m))} of plan {pid}" for pid, m in sorted(missing.items()))
                            + f" within {ready_timeout_s:g} s. Start `edgepart run` on those devices (the standby "
                            f"devices' too, where the plan has fallbacks); pick the network with --interface; where "
                            f"multicast is blocked, use --peer HOST:PORT.")
                    await agents.wait_ready(0.5, essential)
                    waited += 0.5
                # each fallback plan says when it is ready too (one whose spare is not running never is)
                waiting = {s.without: core for s, core in agents.fallbacks()}
                while not stop.is_set():
                    for without, core in list(waiting.items()):
                        if not core.missing_roles():
                            print(f"edgepart-agent ready device={device} fallback-for={without} "
                                  f"plan={core.plan.plan_id}", flush=True)
                            del waiting[without]
                    try:
                        await asyncio.wait_for(stop.wait(), 0.5 if waiting else None)
                    except asyncio.TimeoutError:
                        pass
            finally:
                await agents.stop()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            pass

    _run(body)


@app.command("discover")
def discover_cmd(
    interface: Optional[str] = InterfaceOpt,
    wait_s: float = typer.Option(2.0, "--wait-s", help="How long to listen for announcements."),
    plan: Optional[str] = typer.Option(None, "--plan", help="Show only agents of this plan id."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table."),
    dist: Optional[list[Path]] = typer.Option(None, "--dist", help="The dist/ folder (or one bundle) of a plan: its agents' links are encrypted, and its app key lets discover ask them how they are. Repeatable, one per plan. Without it, only agents started with --insecure are asked."),
    key: Optional[Path] = KeyOpt,
) -> None:
    """List the agents out there: device role, plan id, endpoint, and whether each answers (healthy)."""

    def body():
        from edgepart.agent.net.discovery import Discovery

        from .session import session_credentials

        mine = dict(session_credentials(d, key) for d in dist or ())
        creds = {p.plan_id: c for p, c in mine.items()}

        def ask(a):
            if not a.secure:
                return _ping(a.endpoint, a.plan_id)
            if a.plan_id in creds:
                return _ping(a.endpoint, a.plan_id, creds[a.plan_id], a.role)
            return _unasked()

        async def main():
            d = Discovery(interface, plan)
            await d.start()
            try:
                await asyncio.sleep(wait_s)
                found = list(d.found.values())
                health = await asyncio.gather(*(ask(a) for a in found))
                return found, health, d.duplicates()
            finally:
                await d.close()

        found, health, dups = asyncio.run(main())
        rows = []
        for a, (rtt, st) in zip(found, health):
            rows.append({"role": a.role, "plan_id": a.plan_id, "endpoint": a.endpoint,
                         "healthy": None if rtt == UNASKED else rtt is not None, "encrypted": a.secure,
                         "rtt_ms": rtt, "duplicate": (a.plan_id, a.role) in dups,
                         "ready": st.ready if st else None, "missing_peers": list(st.missing) if st else [],
                         "threads": st.threads if st else None, "threads_from": st.threads_from if st else "",
                         "runtimes": list(st.runtimes) if st else [], "providers": list(st.providers) if st else []})
        for r in rows:
            if r["healthy"] is None:
                r["rtt_ms"] = None
        rows.sort(key=lambda r: (r["plan_id"], r["role"]))
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        if not rows:
            console.print(f"no agents answered within {wait_s:g} s. Are they running (`edgepart run`)? "
                          f"Same network (--interface)? Where multicast is blocked, agents need --peer.")
            return
        t = Table(title=f"edgepart agents ({len(rows)})", title_justify="left")
        for c in ("plan", "role", "endpoint", "health", "threads", "runtime", "providers"):
            t.add_column(c)
        for r in rows:
            h = ("[dim]encrypted: give --dist[/]" if r["healthy"] is None
                 else f"[green]ok[/] {r['rtt_ms']:.1f} ms" if r["healthy"] else "[red]not answering[/]")
            if r["healthy"] and r["ready"] is False:
                h += f" [yellow](not linked to {', '.join(r['missing_peers']) or 'its peers'})[/]"
            if r["duplicate"]:
                h += " [yellow](duplicate role!)[/]"
            th = f"{r['threads']} ({r['threads_from']})" if r["threads"] else "-"
            t.add_row(r["plan_id"], r["role"], r["endpoint"], h, th, "+".join(r["runtimes"]) or "-",
                      ", ".join(r["providers"]) or "-")
        console.print(t)

    _run(body)


UNASKED = -1.0  # an encrypted agent of a plan whose keys discover was not given


async def _unasked() -> tuple[float, None]:
    return UNASKED, None


async def _ping(endpoint: str, plan_id: str, credentials=None, role: str = "",
                timeout_s: float = 1.0) -> tuple[float | None, "Status | None"]:
    """(round trip in ms, what the agent says of itself), or (None, None) if it does not answer.
    `credentials` (the plan's keys) and `role` for an agent whose links are encrypted."""
    import zmq
    import zmq.asyncio

    from edgepart.agent.net.link import secure_client

    from .wire import Header, Status, decode

    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        secure_client(s, credentials, role)
    try:
        s.connect(endpoint)
        t0 = time.perf_counter()
        await s.send(Header("ping", plan_id, "@discover").encode())
        frames = await asyncio.wait_for(s.recv_multipart(), timeout_s)
        h, _ = decode(frames)
        if h.kind != "pong":
            return None, None
        return (time.perf_counter() - t0) * 1e3, Status.decode(h.message)
    except Exception:  # unreachable, garbage, timeout: all mean "not healthy"
        return None, None
    finally:
        s.close(0)
        ctx.term()


@app.command("infer")
def infer_cmd(
    dist: Path = typer.Argument(..., help="The dist/ folder, or any one bundle of the plan (only its plan is read)."),
    inputs: Path = typer.Option(..., "--inputs", help="An .npz mapping model input names to arrays."),
    output: Path = typer.Option(Path("out.npz"), "--output", "-o", help="Where to write the outputs (.npz, by output name)."),
    timeout_s: float = typer.Option(10.0, "--timeout-s", help="Deadline for the request, in seconds."),
    discover_timeout_s: float = typer.Option(10.0, "--discover-timeout-s", help="How long to look for the agents."),
    interface: Optional[str] = InterfaceOpt,
    peer: Optional[list[str]] = PeerOpt,
    key: Optional[Path] = KeyOpt,
    insecure: bool = InsecureOpt,
    source: Optional[str] = typer.Option(None, "--source", help="In a plan with sources (package --sources): whose request this is, one of the sources.yaml names. Its requests take that source's lane, in its priority (docs/priority.md)."),
) -> None:
    """Send one request to the running cluster and write its outputs to an .npz."""

    def body():
        from .inputs import load_npz, save_npz
        from .session import InferenceSession

        feeds = load_npz(inputs)
        with InferenceSession(dist, interface=interface, peers=tuple(peer or ()), timeout_s=timeout_s,
                              discover_timeout_s=discover_timeout_s, key=key, insecure=insecure, source=source) as sess:
            t0 = time.perf_counter()
            res = sess.submit(feeds).result(timeout_s + 5)
            ms = (time.perf_counter() - t0) * 1e3
        save_npz(output, res)
        err_console.print(f"{len(res)} output(s) written to {output} in {ms:.1f} ms: "
                          + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in res.items()))

    _run(body)

