"""Agents as real processes on this machine: the emulated cluster of the demo, tests and benchmarks.

    with AgentProcesses("dist/", interface="127.0.0.1") as procs:    # one `edgepart run` per bundle
        sess = edgepart.InferenceSession("dist/", interface="127.0.0.1")
        procs.kill("pi-b"); procs.restart("pi-b")

With `hosts={device: netns.Host}` each agent runs inside its own network namespace instead.
Each process gets its own process group; stop() ends them all (SIGTERM, then SIGKILL).

With `cpu_cap={device: fraction}` (or one fraction for all), or `gflops={device: GFLOP/s}` with
`core_gflops` (one core's measured speed on the model), each agent runs in a CPU cgroup of its own
that lets it use that share of one core (cpucap.py): as slow as the device it stands for. The
groups are made on start and removed on stop, also when start fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

from edgepart.bundle import is_device_folder
from edgepart.errors import PeerError


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the process that started us dies, however it dies (Linux).

    (The kernel ties this to the starting *thread*: start agents from a thread that outlives them.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and the session's own cleanup remain


class AgentProcess:
    def __init__(self, bundle: Path, argv: list[str], host=None, env: Mapping[str, str] | None = None,
                 cpu_fraction: float | None = None):
        self.bundle, self.argv, self.host, self.env = bundle, argv, host, env
        self.device = bundle.name
        self.cpu_fraction = cpu_fraction
        self.cap = None  # cpucap.CpuCap while it runs capped
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.endpoint = ""
        self._got = threading.Event()
        self._ready = threading.Event()

    def start(self) -> None:
        self.lines, self.endpoint = [], ""
        self._got.clear()
        self._ready.clear()
        preexec = _die_with_parent
        if self.cpu_fraction is not None:
            from edgepart.testing.cpucap import CpuCap, cleanup_stale

            if self.cap is None:
                cleanup_stale()  # groups a killed run left behind (their creator is gone)
                self.cap = CpuCap.create(self.device, self.cpu_fraction)
            cap = self.cap

            def preexec() -> None:  # in the child, before exec: capped from its first instruction
                _die_with_parent()
                cap.enter()
        kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}, preexec_fn=preexec)
        self.proc = self.host.popen(self.argv, **kw) if self.host is not None else subprocess.Popen(self.argv, **kw)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True, name=f"edgepart-log-{self.device}").start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if proc is not self.proc:
                continue  # the last words of a process since killed or replaced: not the new one's
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("edgepart-agent device=") and "endpoint=" in line:
                self.endpoint = line.split("endpoint=", 1)[1].strip()
                self._got.set()
            elif line.startswith("edgepart-agent ready"):
                self._ready.set()
        if proc is self.proc:
            self._got.set()  # it exited: wait_started says so

    def wait_started(self, timeout_s: float) -> str:
        if not self._got.wait(timeout_s) or not self.endpoint:
            tail = "\n".join(self.lines[-15:])
            code = self.proc.poll() if self.proc is not None else None
            how = f"exited with code {code} before it started" if code is not None else f"did not start within {timeout_s:g} s"
            raise PeerError(f"agent {self.device} {how}. Its output:\n{tail}")
        return self.endpoint

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            if self.proc is None:
                return
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout_s)
            self.proc = None
        finally:
            self.uncap()

    def uncap(self) -> None:
        """Remove its CPU cgroup (whatever still runs in it goes back to the parent group)."""
        if self.cap is not None:
            cap, self.cap = self.cap, None
            cap.remove()


class AgentProcesses:
    """One `edgepart run` process per bundle under `dist`."""

    def __init__(self, dist: Path | str, *, interface: str | None = "127.0.0.1", hosts: Mapping[str, object] | None = None,
                 threads: int = 1, cpus: Mapping[str, int] | None = None, ports: Mapping[str, int] | None = None,
                 peers: Mapping[str, Sequence[str]] | None = None, extra: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, devices: Sequence[str] | None = None,
                 cpu_cap: float | Mapping[str, float] | None = None, gflops: Mapping[str, float] | None = None,
                 core_gflops: float | None = None):
        self.dist = Path(dist)
        caps = _caps(cpu_cap, gflops, core_gflops)
        # every device's folder, a standby device's (fallback bundles only: docs/failover.md) too
        bundles = sorted(p for p in self.dist.iterdir() if is_device_folder(p)) if self.dist.is_dir() else []
        if devices is not None:  # the others run elsewhere (an embedded Agent, another machine)
            bundles = [b for b in bundles if b.name in devices]
        if not bundles:
            raise PeerError(f"{dist} holds no bundles; package a model first.")
        unknown = sorted((set(cpu_cap if isinstance(cpu_cap, Mapping) else ()) | set(gflops or ()))
                         - {b.name for b in bundles})
        if unknown:  # a misspelt device would run uncapped and skew whatever is measured
            raise ValueError(f"CPU caps name {', '.join(unknown)}, not a bundle under {dist} "
                             f"({', '.join(b.name for b in bundles)})")
        self.agents: dict[str, AgentProcess] = {}
        for b in bundles:
            host = (hosts or {}).get(b.name)
            ip = getattr(host, "ip", None) or interface
            argv = [sys.executable, "-m", "edgepart", "run", str(b.resolve()), "--threads", str(threads)]
            if ip:
                argv += ["--interface", ip]
            if ports and b.name in ports:
                argv += ["--port", str(ports[b.name])]
            for p in (peers or {}).get(b.name, ()):
                argv += ["--peer", p]
            argv += list(extra)
            if cpus and b.name in cpus:
                argv = ["taskset", "-c", str(cpus[b.name]), *argv]
            self.agents[b.name] = AgentProcess(b, argv, host, env, caps(b.name))

    def start(self, timeout_s: float = 60.0) -> "AgentProcesses":
        try:
            for a in self.agents.values():
                a.start()
            for a in self.agents.values():
                a.wait_started(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every agent found the peers it sends to."""
        end = time.monotonic() + timeout_s
        for a in self.agents.values():
            if not a.wait_ready(max(end - time.monotonic(), 0.01)):
                raise PeerError(f"agent {a.device} did not find its peers within {timeout_s:g} s:\n" + "\n".join(a.lines[-10:]))

    @property
    def endpoints(self) -> dict[str, str]:
        return {d: a.endpoint for d, a in self.agents.items()}

    @property
    def cgroups(self) -> dict[str, Path]:
        """Each capped agent's CPU cgroup folder, while it runs."""
        return {d: a.cap.path for d, a in self.agents.items() if a.cap is not None}

    def kill(self, device: str, sig: int = signal.SIGKILL) -> None:
        a = self.agents[device]
        a.signal(sig)
        if a.proc is not None:
            a.proc.wait(10)
        a.proc = None

    def restart(self, device: str, timeout_s: float = 60.0) -> str:
        a = self.agents[device]
        a.stop()
        a.start()
        return a.wait_started(timeout_s)

    def stop(self) -> None:
        errors = []
        for a in self.agents.values():
            try:
                a.stop()
            except Exception as e:  # noqa: BLE001 - stop the others, then say what failed
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> "AgentProcesses":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _caps(cpu_cap, gflops, core_gflops):
    """device -> its share of one core, or None: from fractions, or from target speeds and a core's."""
    if cpu_cap is not None and gflops is not None:
        raise ValueError("give cpu_cap (fractions of a core) or gflops with core_gflops, not both")
    if gflops is not None:
        if core_gflops is None:
            raise ValueError("gflops= caps need core_gflops=: one core's measured speed on the model "
                             "(packager/calibrate.py, measure_device)")
        from edgepart.testing.cpucap import fraction_for

        frac = {d: fraction_for(g, core_gflops) for d, g in gflops.items()}
        return frac.get
    if cpu_cap is None:
        return lambda device: None
    if isinstance(cpu_cap, (int, float)):
        return lambda device: float(cpu_cap)
    return dict(cpu_cap).get
