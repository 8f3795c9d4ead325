"""What does each wire codec cost and save?

For a 1 MB and an 8 MB float32 activation (NCHW) at 0 %, 50 % and 90 % zeros (post-ReLU-like: the
zeros scattered at random, which is the worst case for a bitmap): encode and decode throughput in
GB/s of the dense tensor, and the compression ratio (dense bytes / frame bytes), for every codec.
`channels` sends half the channels (every other one: the gather path; a contiguous run is a slice
and faster). Throughput is the median of repeated runs, one thread, after warm-up.

    python bench/bench_codecs.py [--quick] [--json]     # --json: also bench/results/codecs.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms, save  # noqa: E402
from edgepart import codecs  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 132)

SIZES = {"1 MB": (1, 64, 64, 64), "8 MB": (1, 128, 128, 128)}
ZEROS = (0.0, 0.5, 0.9)
CODECS = [
    ("dense", {}),
    ("channels", {"axis": 1, "channels": None}),  # every other channel, filled in per shape
    ("bitmap", {}),
    ("fp16", {}),
    ("int8", {"mode": "affine"}),
    ("int8", {"mode": "symmetric"}),
]


def activation(shape: tuple, zeros: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(shape, dtype=np.float32)) + np.float32(0.01)
    x[rng.random(shape) < zeros] = 0
    return x


def run(quick: bool) -> list[dict]:
    rows = []
    for size, shape in SIZES.items():
        n = 5 if quick else (30 if size == "1 MB" else 10)
        for zeros in ZEROS:
            x = activation(shape, zeros)
            for kind, params in CODECS:
                if kind == "channels":
                    params = {"axis": 1, "channels": list(range(0, shape[1], 2))}
                e = codecs.encode(kind, params, x)
                enc_ms = median_ms(lambda: codecs.encode(kind, params, x), n, warmup=2)
                frame = bytes(e.frame)  # as received: a fresh buffer
                dec_ms = median_ms(lambda: codecs.decode(e.codec, e.params, e.dtype, e.shape, frame), n, warmup=2)
                name = kind if kind != "int8" else f"int8 {params['mode'][:3]}"
                rows.append({"size": size, "zeros": zeros, "codec": name, "sent_as": e.codec,
                             "dense_bytes": x.nbytes, "frame_bytes": e.nbytes,
                             "ratio": x.nbytes / max(e.nbytes, 1),
                             "encode_gbps": x.nbytes / enc_ms / 1e6, "decode_gbps": x.nbytes / dec_ms / 1e6,
                             "encode_ms": enc_ms, "decode_ms": dec_ms})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", action="store_true", help="also write bench/results/codecs.json")
    args = ap.parse_args()
    rows = run(args.quick)
    t = Table(title="wire codecs: float32 NCHW activation, one thread (GB/s of the dense tensor)")
    for col in ("size", "zeros", "codec", "sent as", "frame bytes", "ratio", "encode GB/s", "decode GB/s"):
        t.add_column(col, justify="left" if col in ("size", "codec", "sent as") else "right")
    for r in rows:
        t.add_row(r["size"], f"{r['zeros']:.0%}", r["codec"], r["sent_as"], f"{r['frame_bytes']:,}",
                  f"{r['ratio']:.2f}x", f"{r['encode_gbps']:.2f}", f"{r['decode_gbps']:.2f}")
    console.print(t)
    if args.json:
        console.print(f"wrote {save('codecs', {'rows': rows})}")


if __name__ == "__main__":
    main()
