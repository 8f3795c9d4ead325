"""Sessions for steps: execution-provider choice, and one session per step on its runtime.

Providers (docs/agents.md, "Execution providers"): `edgepart run --providers auto`, the default,
takes from what this onnxruntime build offers TensorRT, then CUDA, then the ARM providers (ACL,
XNNPACK), then CPU; where cluster.yaml names a device's providers, auto keeps that preference
instead (those this build lacks are skipped and said). A list given by name is taken as it is, and
a provider this build lacks stops the agent at start with what to install. CPU always comes last:
onnxruntime runs there whatever a faster provider cannot. TensorRT keeps its engines in a cache
folder beside the bundle, so a restart does not build them again (under ~/.cache/edgepart where the
bundle folder is read-only). `verify` and reports (local.py) take the plan's providers as they are
(`plan_providers`): CPU unless cluster.yaml named others, never an accelerator the plan did not
ask for.

onnxruntime drops a provider that does not start (a library or driver missing) and runs on CPU
without a word, so every session's providers are compared with those asked for (`make_session`):
under a list given by name that is a ProviderError; otherwise a warning, and the agent reports the
providers its sessions really got (`Providers.started`).

A step whose plan says `runtime: tflite` runs on LiteRT instead (litert.py, docs/tflite.md).

Threads (docs/agents.md, "Threads"): a device's steps share one budget, the cores the process may
use (cpus.py), never the machine's core count. A process that runs only edgepart's sessions
(`edgepart run`) gives them onnxruntime's one process-wide pool (`use_shared_pool`); elsewhere (an
agent embedded in an app, whose own sessions would refuse a global pool) each session gets a pool
of the budget's size, and a device with several steps turns spinning off, so the idle pools of the
steps that are not running do not burn the cores the running one needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .cpus import cpu_budget
from .errors import BundleError, ProviderError

log = logging.getLogger("edgepart")

CPU = "CPUExecutionProvider"
TENSORRT, CUDA = "TensorrtExecutionProvider", "CUDAExecutionProvider"
ACL, XNNPACK = "ACLExecutionProvider", "XnnpackExecutionProvider"
# `--providers auto`: the fastest a build may offer first
AUTO_ORDER = (TENSORRT, CUDA, ACL, XNNPACK, CPU)
# the names `--providers` takes, and onnxruntime's for them
SHORT_NAMES = {
    "tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider", "acl": ACL, "armnn": "ArmNNExecutionProvider",
    "xnnpack": XNNPACK, "nnapi": "NnapiExecutionProvider", "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "dnnl": "DnnlExecutionProvider", "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider", "cpu": CPU,
}
# what to install where a provider asked for by name is missing
INSTALL = {
    TENSORRT: "onnxruntime-gpu built with TensorRT, and TensorRT itself (on a Jetson: NVIDIA's JetPack onnxruntime-gpu wheel)",
    CUDA: "onnxruntime-gpu with a matching CUDA and cuDNN (on a Jetson: NVIDIA's JetPack onnxruntime-gpu wheel)",
    ACL: "an onnxruntime built with --use_acl (the Arm Compute Library)",
    XNNPACK: "an onnxruntime built with --use_xnnpack (onnxruntime's Android and iOS packages have it)",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "CoreMLExecutionProvider": "onnxruntime on macOS or iOS",
}

_shared_threads = 0  # the size of onnxruntime's process-wide pool, once use_shared_pool set it


def choose_providers(preferred: Sequence[str], available: Iterable[str]) -> list[str]:
    """The preferred providers this build has, in order, with CPU last as the fallback."""
    have = set(available)
    chosen = [p for p in dict.fromkeys(preferred) if p in have and p != CPU]
    missing = [p for p in preferred if p not in have]
    if missing:
        log.info("execution providers not in this onnxruntime build, skipped: %s", ", ".join(missing))
    return chosen + [CPU]


@dataclass(frozen=True)
class Providers:
    """What runs a device's ONNX steps: onnxruntime providers in order, each with its options,
    and where the choice came from ("auto", "cluster.yaml", "--providers")."""

    names: tuple[str, ...] = (CPU,)
    options: tuple[tuple[tuple[str, str], ...], ...] = ((),)
    source: str = "auto"

    def for_onnxruntime(self) -> tuple[list[str], list[dict[str, str]]]:
        return list(self.names), [dict(o) for o in self.options]

    @property
    def short(self) -> tuple[str, ...]:
        """The names without onnxruntime's suffix (CUDA, CPU), for status lines and tables."""
        return tuple(n.removesuffix("ExecutionProvider") for n in self.names)

    def started(self, got: Iterable[str]) -> "Providers":
        """These providers less those no session really got (`got`: what the sessions'
        get_providers() said), so status lines and `edgepart discover` show what runs the steps."""
        have = set(got) | {CPU}
        keep = [i for i, n in enumerate(self.names) if n in have]
        return Providers(tuple(self.names[i] for i in keep), tuple(self.options[i] for i in keep), self.source)


def parse_providers(text: str | Sequence[str]) -> tuple[str, ...]:
    """`auto`, or a list of providers (comma-separated, short or onnxruntime names) as onnxruntime
    names; an unknown name is a ProviderError that lists the known ones."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items or items == ["auto"]:
        return ("auto",)
    out = []
    for t in items:
        full = SHORT_NAMES.get(t.lower(), t if t.endswith("ExecutionProvider") else "")
        if not full or t.lower() == "auto":
            raise ProviderError(f"--providers {t!r} is not a provider edgepart knows. Give auto, or a comma-separated "
                                f"list of: {', '.join(dict.fromkeys(SHORT_NAMES))} (or onnxruntime's full names).")
        out.append(full)
    return tuple(dict.fromkeys(out))


def _full_name(p: str) -> str:
    return SHORT_NAMES.get(p.lower(), p)


def plan_providers(planned: Sequence[str] = (), available: Iterable[str] | None = None) -> Providers:
    """The providers a plan names for a device, those this build has, in order, CPU last; CPU alone
    where it names none. No accelerator the plan did not name: `verify` and reports run the plan as
    packaged (docs/agents.md, "Execution providers"), not on whatever this machine offers."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    names = choose_providers([_full_name(p) for p in planned], available)
    return Providers(tuple(names), tuple(() for _ in names), "plan")


def choose(requested: str | Sequence[str] = "auto", planned: Sequence[str] = (), available: Iterable[str] | None = None,
           *, cache_dir: Path | None = None, threads: int = 0, device_id: int = 0, fp16: bool = False) -> Providers:
    """The providers for a device's ONNX steps (see the module's doc for the rule), with options:
    the GPU's `device_id`; TensorRT's engine and timing caches under `cache_dir` and `fp16` (off:
    the answers stay those of the model); XNNPACK's own pool of `threads`."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    have = list(available)
    planned = tuple(_full_name(p) for p in planned)  # bundles written before cluster.yaml's names were checked
    asked = parse_providers(requested)
    if asked != ("auto",):
        lacking = [p for p in asked if p not in have]
        if lacking:
            p = lacking[0]
            raise ProviderError(
                f"--providers asks for {p}, but this onnxruntime build has only "
                f"{', '.join(x.removesuffix('ExecutionProvider') for x in have)}. Install "
                f"{INSTALL.get(p, 'an onnxruntime build that has it')} (and remove the plain onnxruntime "
                f"package, which hides it), or run with --providers auto.")
        names, source = [p for p in asked if p != CPU], "--providers"
    elif tuple(planned) and tuple(planned) != (CPU,):
        names, source = choose_providers(planned, have)[:-1], "cluster.yaml"
    else:
        names, source = [p for p in AUTO_ORDER if p in have and p != CPU], "auto"
    names.append(CPU)
    return Providers(tuple(names), tuple(tuple(sorted(_options(p, cache_dir, threads, device_id, fp16).items()))
                                         for p in names), source)


def _options(p: str, cache_dir: Path | None, threads: int, device_id: int, fp16: bool) -> dict[str, str]:
    if p == TENSORRT:
        o = {"device_id": str(device_id), "trt_fp16_enable": str(fp16)}
        trt = tensorrt_cache(cache_dir) if cache_dir is not None else None
        if trt is not None:
            o.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt),
                     trt_timing_cache_enable="True", trt_timing_cache_path=str(trt))
        return o
    if p in (CUDA, "ROCMExecutionProvider", "MIGraphXExecutionProvider"):
        return {"device_id": str(device_id)}
    if p == XNNPACK and threads > 0:
        return {"intra_op_num_threads": str(threads)}
    return {}


def tensorrt_cache(cache_dir: Path | str) -> Path | None:
    """Where TensorRT keeps its engines for a bundle: `cache_dir`/tensorrt (in the bundle folder),
    else, where that cannot be written (a read-only bundle), a folder of its own under
    ~/.cache/edgepart/tensorrt; None (no cache: engines are built at every start) where neither
    can. Said in the log either way (docs/agents.md, "Execution providers")."""
    want = Path(cache_dir) / "tensorrt"
    try:
        key = hashlib.sha256(str(Path(cache_dir).resolve()).encode()).hexdigest()[:16]
        fallback: Path | None = Path.home() / ".cache" / "edgepart" / "tensorrt" / key
    except (OSError, RuntimeError):  # no home folder
        fallback = None
    why = ""
    for d in (want, fallback):
        if d is None:
            continue
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                if d != want:
                    log.warning("TensorRT cannot keep its engines in %s (%s): they go to %s", want, why, d)
                return d
            why = why or "not writable"
        except OSError as e:
            why = why or (e.strerror or type(e).__name__)
    log.warning("TensorRT cannot keep its engines in %s (%s) nor under ~/.cache/edgepart: no engine cache, "
                "so each start builds them again", want, why)
    return None


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


def make_step_session(path: Path | str, step: Any, providers: Providers | Sequence[str] = (CPU,), threads: int = 0,
                      *, spin: bool = True):
    """The session for one step of a plan, on the runtime the plan gives it: onnxruntime, or LiteRT
    for a TFLite step (its inputs and outputs in the plan's layout either way)."""
    if getattr(step, "runtime", "onnx") == "tflite":
        from .litert import make_tflite_session

        return make_tflite_session(path, step.io, threads)
    return make_session(path, providers, threads, spin=spin)


def make_session(path: Path | str | bytes, providers: Providers | Sequence[str] = (CPU,), threads: int = 0, *,
                 spin: bool = True):
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
    if isinstance(providers, Providers):
        chosen, options = providers.for_onnxruntime()
        for o in options:  # TensorRT writes its engines there
            if "trt_engine_cache_path" in o:
                try:
                    Path(o["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    log.warning("TensorRT cannot keep its engines in %s (%s): no engine cache",
                                o["trt_engine_cache_path"], e.strerror or type(e).__name__)
                    for k in ("trt_engine_cache_enable", "trt_timing_cache_enable"):
                        o[k] = "False"
                    for k in ("trt_engine_cache_path", "trt_timing_cache_path"):
                        o.pop(k, None)
        strict = providers.source == "--providers"
    else:
        chosen = choose_providers(providers, ort.get_available_providers())
        options = [{} for _ in chosen]
        strict = False
    try:
        sess = ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=chosen,
                                    provider_options=options)
    except Exception as e:  # onnxruntime raises its own untyped errors
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        gpu = [c for c in chosen if c != CPU]
        if gpu and ("provider" in msg.lower() or "cuda" in msg.lower() or "tensorrt" in msg.lower()):
            raise ProviderError(
                f"onnxruntime could not start {', '.join(gpu)} for {path}: {msg}. Check the drivers and "
                f"libraries that provider needs, or run with --providers cpu.") from None
        raise BundleError(
            f"onnxruntime cannot load {path}: {msg}. The file may be corrupt or need a newer "
            f"onnxruntime; check `pip show onnxruntime` on this device."
        ) from None
    refused = _check_started(sess.get_providers(), chosen, strict, path)
    if refused is not None:
        del sess  # its threads go now, not when the traceback does
        raise refused
    return sess


_fallbacks_said: set[tuple[str, ...]] = set()  # (folder, missing providers...) already warned about


def _check_started(got: Sequence[str], asked: Sequence[str], strict: bool,
                   path: Path | str | bytes) -> ProviderError | None:
    """onnxruntime drops a provider that does not start and runs on the others without an error:
    compare what the session got with what was asked. Under `--providers` that stops the agent
    (the ProviderError returned); otherwise a warning, once per bundle folder."""
    missing = [p for p in asked if p not in got]
    if not missing:
        return None
    short = ", ".join(p.removesuffix("ExecutionProvider") for p in missing)
    ran = ", ".join(p.removesuffix("ExecutionProvider") for p in got)
    where = "a model in memory" if isinstance(path, bytes) else str(path)
    if strict:
        return ProviderError(
            f"--providers asks for {short}, but onnxruntime did not start it for {where} and would run on "
            f"{ran} instead: the libraries or driver it needs did not load (onnxruntime's log on stderr "
            f"says which). It needs {'; '.join(INSTALL.get(p, 'an onnxruntime build that has ' + p) for p in missing)}, "
            f"with a driver that matches; or run with --providers auto to run on what starts.")
    key = (str(Path(where).parent) if not isinstance(path, bytes) else "", *missing)
    if key not in _fallbacks_said:
        _fallbacks_said.add(key)
        log.warning("onnxruntime did not start %s for %s (not in this build, or the libraries or driver it "
                    "needs did not load): the steps there run on %s", short, where, ran)
    return None
