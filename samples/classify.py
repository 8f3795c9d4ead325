"""Classify photos with a split EfficientNet-Lite0, through the public API only.

    edgepart package model.onnx -c cluster.yaml --input-shape input=1x3x224x224 -o dist/
    edgepart run dist/device-b --interface 127.0.0.1 &        # every device but this one
    python samples/classify.py dist/ --embed device-a --interface 127.0.0.1

With --embed, this process is that device too: it computes its stage itself (the camera holder).
Images: scikit-learn's two sample photos, cropped and resized (no download).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import edgepart


def photos(n: int) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = []
    for i in range(n):
        img = load_sample_images().images[i % 2]
        h, w = img.shape[:2]
        s = int(rng.integers(200, min(h, w)))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        idx = np.linspace(0, s - 1, 224).astype(int)
        crop = img[y + idx][:, x + idx].astype(np.float32) / 255.0
        out.append(((crop - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dist")
    ap.add_argument("--embed", help="the device whose bundle this process serves itself")
    ap.add_argument("--interface", default=None)
    ap.add_argument("-n", type=int, default=16)
    a = ap.parse_args()
    x = photos(a.n)
    agent = edgepart.Agent(f"{a.dist}/{a.embed}", interface=a.interface).start() if a.embed else None
    try:
        with edgepart.InferenceSession(a.dist, interface=a.interface) as sess:
            name = sess.get_inputs()[0].name
            t0 = time.perf_counter()
            futures = [sess.submit({name: x[i:i + 1]}) for i in range(a.n)]  # pipelined
            for i, f in enumerate(futures):
                (logits,) = f.result().values()
                print(f"photo {i}: ImageNet class {int(logits.argmax())}")
            print(f"{a.n / (time.perf_counter() - t0):.1f} images/s")
    finally:
        if agent:
            agent.stop()


if __name__ == "__main__":
    main()
