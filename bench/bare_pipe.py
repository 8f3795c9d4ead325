"""The reference: a bare, hand-written 2-process pipe with no discovery, protocol checks or routing.

Head (the caller's process) runs stage 0 and sends what crosses the cut as one msgpack header plus
zero-copy raw frames over pyzmq; tail runs stage 1 and sends the output back the same way. This is
the floor that edgepart's agents are measured against (bench/bench_agents.py).

    python bench/bare_pipe.py tail --model dist/device-b/stage1.onnx --port 5599   # one process
    (the head side is used as a library: BareHead(...).latency_ms() / .throughput())

The same shape as the plain deployment, an app in its own process and one process per stage:

    python bench/bare_pipe.py tail --model stage0.onnx --port 5601 --to 5611    # receives, sends on
    python bench/bare_pipe.py tail --model stage1.onnx --port 5611              # answers on 5612
    (the app: BareApp(5601, 5612).one(x) / .stream(x, n))
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


def tail(model: str, port: int, threads: int = 1, to: int = 0) -> None:
    """One stage: receive on `port`, compute, send on to the stage at port `to` (connects), or
    back to whoever connects to port + 1."""
    sess = session(model, threads)
    outs = [o.name for o in sess.get_outputs()]
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(f"tcp://127.0.0.1:{port}")
    if to:
        push.connect(f"tcp://127.0.0.1:{to}")
    else:
        push.bind(f"tcp://127.0.0.1:{port + 1}")
    print("tail ready", flush=True)
    while True:
        rid, feeds = recv(pull)
        if rid < 0:
            if to:
                send(push, rid, feeds)  # the next stage stops too
            break
        send(push, rid, dict(zip(outs, sess.run(outs, feeds))))
    ctx.destroy(linger=1000 if to else 0)


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


class BareApp:
    """The app's side of a chain of stage processes: inputs out to `first_port`, answers back from
    `answer_port` (the last stage's port + 1). No model here: the app only sends and receives."""

    def __init__(self, first_port: int, answer_port: int):
        self.ctx = zmq.Context()
        self.push, self.pull = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.push.connect(f"tcp://127.0.0.1:{first_port}")
        self.pull.connect(f"tcp://127.0.0.1:{answer_port}")
        self.rid = 0

    def one(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.rid += 1
        send(self.push, self.rid, {"input": x})
        return recv(self.pull)[1]

    def stream(self, x: np.ndarray, n: int, window: int = 128) -> float:
        """n requests, at most `window` in flight (as a session's window), answers collected by a
        thread; returns req/s."""
        got, sent = [], threading.Semaphore(window)

        def collect():
            for _ in range(n):
                got.append(recv(self.pull)[0])
                sent.release()

        t = threading.Thread(target=collect)
        t0 = time.perf_counter()
        t.start()
        for _ in range(n):
            sent.acquire()
            self.rid += 1
            send(self.push, self.rid, {"input": x})
        t.join()
        assert len(got) == n
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        send(self.push, -1, {"x": np.zeros(1, np.float32)})
        self.ctx.destroy(linger=1000)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["tail"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--to", type=int, default=0, help="send on to the stage listening on this port")
    a = ap.parse_args()
    tail(a.model, a.port, a.threads, a.to)
