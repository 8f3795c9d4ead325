"""The app's side of the cluster in the camera detection sample: the bundles of a dist/ folder, the
camera model and its packaging for emulated devices (--local), the emulated devices' agents, and what
each device's steps take (docs of the sample: README.md, "What happens to a frame").

demo.py runs the stream and draws it; this module is what it and bench/bench_camera.py need to have a
cluster to stream through.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import detector  # noqa: E402
import sources  # noqa: E402


class DemoError(Exception):
    """An error the user can fix; printed as one paragraph, exit code 2 (3 when no cluster answered)."""

    def __init__(self, msg: str, code: int = 2):
        super().__init__(msg)
        self.code = code


def bundles_of(dist: Path) -> dict:
    """{device: edgepart.Bundle} of a dist/ folder, checked to be RetinaFace's (DemoError if not)."""
    import edgepart

    dist = Path(dist)
    if not dist.is_dir():
        raise DemoError(f"--bundle {dist}: no such folder. Give the dist/ folder `edgepart package` wrote "
                        f"(it holds one sub-folder per device), or use --local N.")
    if (dist / "manifest.json").is_file():
        raise DemoError(f"--bundle {dist} is one device's bundle; give the folder that holds every device's "
                        f"(its parent, {dist.parent}).")
    try:
        found = {p.name: edgepart.load_bundle(p) for p in sorted(dist.iterdir()) if (p / "manifest.json").is_file()}
    except edgepart.BundleError as e:
        raise DemoError(f"--bundle {dist}: {e}") from None
    if not found:
        raise DemoError(f"--bundle {dist} holds no bundles (no sub-folder with a manifest.json). Package the "
                        f"model with `edgepart package` first, or use --local N.")
    ids = {b.plan_id for b in found.values()}
    if len(ids) > 1:
        raise DemoError(f"--bundle {dist} mixes bundles of {len(ids)} plans; package once and copy every bundle.")
    plan = next(iter(found.values())).plan
    ins, outs = [t.name for t in plan.inputs], [t.name for t in plan.outputs]
    try:
        if ins not in ([detector.FRAME], [detector.INPUT]) or len(plan.inputs[0].shape) != 4:
            raise ValueError(f"its input is {', '.join(ins)}, not RetinaFace's one image input "
                             f"({detector.FRAME!r}, or the package model's {detector.INPUT!r})")
        detector.check_outputs(outs)
    except ValueError as e:
        raise DemoError(f"--bundle {dist} is a split of {plan.model_name!r}, not of RetinaFace-MobileNet0.25: {e}. "
                        f"Package the camera model (`demo.py --export`, see --help), or use --local N.") from None
    return found


def _testing():
    """edgepart.testing (the emulation harness and the reference models): a source checkout's part,
    not in the wheel (docs/architecture.md, "The testing part")."""
    try:
        from edgepart.testing import emulate, zoo
    except ImportError as e:
        raise DemoError(f"--local and --export need a source checkout of edgepart with the models extra (`make setup`): "
                        f"edgepart.testing cannot be imported here ({e.name or e}). On a cluster of real "
                        f"devices, package the model and use --bundle (see --help).") from None
    return emulate, zoo


def package_local(n: int, hw: tuple[int, int], out: Path | None = None, *, camera: bool = True,
                  caller_ms: float | None = None, gflops: float | None = None) -> Path:
    """RetinaFace packaged for n equal emulated devices (device-a, device-b, ...) at input size hw,
    objective throughput (a stream of frames), the default pipeline strategy; in `out` (a private
    plan: a model name no other run shares), else cached under ~/.cache/edgepart/bundles. `camera`:
    the camera model (uint8 frames in); False: the package's own (float32 NCHW, the mean off).
    The app runs on device-a (cluster.yaml's `caller`), spending `caller_ms` of its CPU a frame
    (None: `app_ms`, measured here when the plan is made), so the planner gives device-a that much
    less of the model (docs/planning.md in the repository, "Where the app runs"). Each device computes
    at `gflops` (None: one core of this machine on this model, measured), so that the app's ms and
    the stages' are on one scale."""
    import edgepart
    import edgepart.packager as packager

    _, zoo = _testing()
    H, W = hw
    model = camera_model_file(zoo) if camera else zoo.retinaface(progress=True)
    name = f"{model.stem}-{H}x{W}"  # the camera model's hash in it: a bundle of another model is never reused
    if out is None:  # (-app: planned with the app's CPU on device-a; earlier caches were not)
        out = zoo.cache_dir().parent / "bundles" / f"{name}-{n}dev-app"
        try:
            if len(bundles_of(out)) == n:
                return out
        except DemoError:
            pass
    else:
        name += f"-{secrets.token_hex(4)}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    devices = [f"device-{chr(ord('a') + i)}" for i in range(n)]
    if caller_ms is None:
        caller_ms = app_ms(model, hw)
    if gflops is None:
        gflops = core_gflops(model, hw)
    cluster = out.parent / f"{out.name}.cluster.yaml"
    cluster.write_text("# emulated devices of the camera_detection sample: equal, one core each (its measured speed on\n"
                       "# the model), on loopback; the app runs on device-a and spends caller_ms of its CPU a frame\n"
                       "devices:\n" + "".join(f"  - {{name: {d}, gflops: {round(gflops, 2)}, memory_mb: 1024}}\n"
                                             for d in devices)
                       + "links:\n  default: {bandwidth_mbps: 1000, latency_ms: 0.1}\n"
                       + f"caller: {devices[0]}\ncaller_ms: {round(caller_ms, 2)}\n")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        packager.package(str(model), str(cluster), out=tmp, objective="throughput",
                         input_shapes={detector.FRAME: (1, H, W, 3)} if camera else {detector.INPUT: (1, 3, H, W)},
                         model_name=name)
    except BaseException as e:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # a half-written package is never left beside the cache
        if isinstance(e, edgepart.EdgepartError):
            raise DemoError(f"packaging RetinaFace for {n} devices failed: {e}") from None
        raise
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def app_ms(model: Path, hw: tuple[int, int], frames: int = 12) -> float:
    """The app's own CPU per frame, in ms (the median over synthetic frames): fitting a frame to the
    model's input and decoding the network's outputs into faces (NMS included), as the Stream does on
    the camera's device. What cluster.yaml's `caller_ms` says; the session's messages are not in it."""
    src = sources.Synthetic(hw, seed=0)
    images = [src.read().image for _ in range(frames)]
    sess, name, feeds = _session_and_feeds(model, hw, images[0])
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    took = []
    for image in images:
        t = time.thread_time()
        _, lb = detector.feed(image, hw, name)
        detector.postprocess(outputs, hw, lb)
        took.append((time.thread_time() - t) * 1e3)
    return float(np.median(took))


def core_gflops(model: Path, hw: tuple[int, int]) -> float:
    """One core of this machine on the model, one thread (the median over the cores this process may
    use): what each emulated device computes."""
    from edgepart.packager.calibrate import measure_cores

    _, _, feeds = _session_and_feeds(model, hw, sources.Synthetic(hw, seed=0).read().image)
    return float(measure_cores(str(model), feeds, sorted(os.sched_getaffinity(0)), runs=8).gflops)


def _session_and_feeds(model: Path, hw: tuple[int, int], image) -> tuple:
    """An onnxruntime session of `model`, its input's name, and `image` fed to it."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess, name, {name: detector.feed(image, hw, name)[0]}


def camera_model_file(zoo, out: Path | None = None) -> Path:
    """The camera model (detector.camera_model of the package's RetinaFace), written to `out`, or cached
    beside the models under a name with its hash (a changed model is a new file, and a new bundle)."""
    import hashlib

    import onnx

    m = detector.camera_model(zoo.retinaface(progress=True))
    if out is None:
        digest = hashlib.sha256(m.SerializeToString()).hexdigest()[:12]
        out = zoo.cache_dir() / f"retinaface-mobilenet0.25-camera-{digest}.onnx"
        if out.is_file():
            return out
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    onnx.save(m, str(tmp))
    os.replace(tmp, out)
    return out


def entry_device(bundles: dict) -> str:
    """The device every frame goes to first (the plan's hint; else the first step's device)."""
    plan = next(iter(bundles.values())).plan
    return plan.hints.entry or plan.steps[0].device


def start_local(dist: Path, exclude: tuple[str, ...] = (), ready: bool = True):
    """One `edgepart run` per bundle (but `exclude`) on loopback, each with 1 thread pinned to a core of
    its own (they share cores when there are fewer than devices)."""
    emulate, _ = _testing()
    cores = sorted(os.sched_getaffinity(0))
    devs = sorted(p.name for p in Path(dist).iterdir() if (p / "manifest.json").is_file())
    procs = emulate.AgentProcesses(dist, interface="127.0.0.1", threads=1, devices=[d for d in devs if d not in exclude],
                           cpus={d: cores[i % len(cores)] for i, d in enumerate(devs)})
    procs.start(60)
    try:
        if ready:
            procs.wait_ready(30)
    except BaseException:
        procs.stop()
        raise
    return procs


# -- where the time goes ----------------------------------------------------------------------------------

def profile(bundles: dict, hw: tuple[int, int], runs: int = 5) -> dict:
    """Each device's steps timed alone here (1 onnxruntime thread, a synthetic frame, median of `runs`)
    and the bytes each link carries per frame, from one chained run of the bundles' own files.

    The session does not report per-device times while streaming (see the README), so these are the
    per-device figures the overlay shows, beside the planner's estimates."""
    import onnxruntime as ort

    plan = next(iter(bundles.values())).plan
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    frame = sources.Synthetic(hw, seed=1).read().image
    name = plan.inputs[0].name
    x, _ = detector.feed(frame, hw, name)
    have = {name: x}
    made_by = {name: "@caller"}
    steps = list(plan.steps)
    out = {"device_ms": {}, "steps": [], "link_bytes": {}}
    while steps:
        ready = [s for s in steps if all(t.name in have for t in s.inputs)]
        if not ready:
            raise DemoError("the plan's steps cannot be chained here (an input no step makes)")
        s = ready[0]
        steps.remove(s)
        sess = ort.InferenceSession(str(bundles[s.device].file(s.model_file)), so, providers=["CPUExecutionProvider"])
        feed = {t.name: have[t.name] for t in s.inputs}
        names = [o.name for o in sess.get_outputs()]
        ts = []
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            res = sess.run(names, feed)
            ts.append((time.perf_counter() - t0) * 1e3)
        ms = float(np.median(ts[1:]))
        have.update(zip(names, res))
        made_by.update({n_: s.device for n_ in names})
        out["steps"].append({"step": s.name, "device": s.device, "ms": ms, "estimated_ms": s.estimated_ms})
        out["device_ms"][s.device] = out["device_ms"].get(s.device, 0.0) + ms
    for r in plan.routes:
        if r.src != r.dst and r.tensor in have:
            key = f"{r.src}->{r.dst}"
            out["link_bytes"][key] = out["link_bytes"].get(key, 0) + int(have[r.tensor].nbytes)
    out["estimates"] = dict(plan.estimates)
    out["order"] = [s["device"] for s in out["steps"]]
    return out


class CpuMeter:
    """With --local: the CPU time each device's agent process used per answered frame, while streaming
    (from /proc, every thread of the process: its compute and its share of the links)."""

    def __init__(self, procs):
        self.pids = {d: a.proc.pid for d, a in procs.agents.items() if a.proc is not None}
        self.last = (self._read(), 0)
        self.ms: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for d, pid in self.pids.items():
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[d] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return out

    def update(self, answered: int, every: int = 10) -> None:
        then, n0 = self.last
        if answered - n0 < every:
            return
        now = self._read()
        self.ms = {d: (now[d] - then[d]) * 1e3 / (answered - n0) for d in now if d in then}
        self.last = (now, answered)
