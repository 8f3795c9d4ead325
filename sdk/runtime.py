"""onnxruntime sessions for steps: execution-provider choice and session creation.

The cluster lists each device's provider preference (CUDA or TensorRT on a Jetson, ACL/XNNPACK on
a phone or Pi, CPU elsewhere). At run time the agent takes the preferred providers this onnxruntime
build actually has, in the preferred order, and always ends with the CPU provider as a fallback.

Threads (docs/agents.md, "Threads"): a device's steps share one budget, the cores the process may
use (cpus.py), never the machine's core count. A process that runs only edgepart's sessions
(`edgepart run`) gives them onnxruntime's one process-wide pool (`use_shared_pool`); elsewhere (an
agent embedded in an app, whose own sessions would refuse a global pool) each session gets a pool
of the budget's size, and a device with several steps turns spinning off, so the idle pools of the
steps that are not running do not burn the cores the running one needs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

from .cpus import cpu_budget
from .errors import BundleError

log = logging.getLogger("edgepart")

CPU = "CPUExecutionProvider"

_shared_threads = 0  # the size of onnxruntime's process-wide pool, once use_shared_pool set it


def choose_providers(preferred: Sequence[str], available: Iterable[str]) -> list[str]:
    """The preferred providers this build has, in order, with CPU last as the fallback."""
    have = set(available)
    chosen = [p for p in dict.fromkeys(preferred) if p in have and p != CPU]
    missing = [p for p in preferred if p not in have]
    if missing:
        log.info("execution providers not in this onnxruntime build, skipped: %s", ", ".join(missing))
    return chosen + [CPU]


def session_threads(requested: int = 0, planned: int = 0) -> tuple[int, str]:
    """The intra-op threads for a device's sessions and where the number came from: `--threads`
    first, then the cluster's per-device `threads`, then the cores this process may use."""
    if requested > 0:
        return requested, "--threads"
    if planned > 0:
        return planned, "cluster.yaml"
    b = cpu_budget()
    if b.source == "affinity":
        return b.cores, f"cpu affinity ({b.affinity} cores)"
    return b.cores, f"{b.source} of {b.quota_cores:g} cores ({b.affinity} in the affinity mask)"


def use_shared_pool(threads: int) -> bool:
    """Give every session of this process one onnxruntime pool of `threads`; call it before the
    first session. False (each session keeps its own pool) where onnxruntime cannot: an older
    build, or an environment already made. Only for processes that run edgepart's sessions alone:
    onnxruntime then refuses any session that asks for a pool of its own."""
    global _shared_threads
    if _shared_threads:
        return _shared_threads == threads
    try:
        from onnxruntime.capi import _pybind_state as C

        C.set_global_thread_pool_sizes(max(1, threads), 1)
    except Exception as e:  # AttributeError on old builds; RuntimeError once the environment exists
        log.debug("one shared onnxruntime pool not available (%s): one pool per session", e)
        return False
    _shared_threads = max(1, threads)
    return True


def shared_pool_threads() -> int:
    """The size of the process-wide pool; 0 where sessions have their own."""
    return _shared_threads


def make_session(path: Path | str, providers: Sequence[str] = (CPU,), threads: int = 0, *, spin: bool = True):
    """An onnxruntime InferenceSession for one step file, with a clear error if it cannot load.
    `threads`: its intra-op pool (0: onnxruntime's default), unless the process shares one pool;
    `spin=False`: pool threads sleep when idle (for a device whose other steps run in between)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if _shared_threads:
        so.use_per_session_threads = False
    elif threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    chosen = choose_providers(providers, ort.get_available_providers())
    try:
        return ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as e:  # onnxruntime raises its own untyped errors
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BundleError(
            f"onnxruntime cannot load {path}: {msg}. The file may be corrupt or need a newer "
            f"onnxruntime; check `pip show onnxruntime` on this device."
        ) from None
