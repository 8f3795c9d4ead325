"""The reference: a bare, hand-written 2-process pipe with no discovery, protocol checks or routing.

Head (the caller's process) runs stage 0 and sends what crosses the cut as one msgpack header plus
zero-copy raw frames over pyzmq; tail runs stage 1 and sends the output back the same way. This is
the floor that edgepart's agents are measured against (bench/bench_agents.py).

    python bench/bare_pipe.py tail --model dist/device-b/stage1.onnx --port 5599   # one process
    (the head side is used as a library: BareHead(...).latency_ms() / .throughput())
"""

from __future__ import annotations

import argparse
import threading
import time

import msgpack
import numpy as np
import onnxruntime as ort
import zmq


def session(path: str, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def send(sock: zmq.Socket, rid: int, arrays: dict[str, np.ndarray]) -> None:
    head = [[k, v.dtype.name, list(v.shape)] for k, v in arrays.items()]
    sock.send_multipart([msgpack.packb({"r": rid, "t": head}), *(np.ascontiguousarray(v) for v in arrays.values())], copy=False)


def recv(sock: zmq.Socket) -> tuple[int, dict[str, np.ndarray]]:
    frames = sock.recv_multipart(copy=False)
    h = msgpack.unpackb(frames[0].bytes)
    return h["r"], {k: np.frombuffer(f.buffer, dtype=d).reshape(s) for (k, d, s), f in zip(h["t"], frames[1:])}


def tail(model: str, port: int, threads: int = 1) -> None:
    sess = session(model, threads)
    outs = [o.name for o in sess.get_outputs()]
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(f"tcp://127.0.0.1:{port}")
    push.bind(f"tcp://127.0.0.1:{port + 1}")
    print("tail ready", flush=True)
    while True:
        rid, feeds = recv(pull)
        if rid < 0:
            break
        send(push, rid, dict(zip(outs, sess.run(outs, feeds))))
    ctx.destroy(linger=0)


class BareHead:
    def __init__(self, model: str, port: int, threads: int = 1):
        self.sess = session(model, threads)
        self.outs = [o.name for o in self.sess.get_outputs()]
        self.ctx = zmq.Context()
        self.push, self.pull = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.push.connect(f"tcp://127.0.0.1:{port}")
        self.pull.connect(f"tcp://127.0.0.1:{port + 1}")
        self.rid = 0

    def one(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.rid += 1
        send(self.push, self.rid, dict(zip(self.outs, self.sess.run(self.outs, {"input": x}))))
        return recv(self.pull)[1]

    def stream(self, x: np.ndarray, n: int) -> float:
        """Pipelined: compute and send n requests while a thread collects the answers; returns req/s."""
        got = []
        t = threading.Thread(target=lambda: got.extend(recv(self.pull)[0] for _ in range(n)))
        t0 = time.perf_counter()
        t.start()
        for _ in range(n):
            self.rid += 1
            send(self.push, self.rid, dict(zip(self.outs, self.sess.run(self.outs, {"input": x}))))
        t.join()
        assert len(got) == n
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        send(self.push, -1, {"x": np.zeros(1, np.float32)})
        self.ctx.destroy(linger=100)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["tail"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    tail(a.model, a.port, a.threads)
