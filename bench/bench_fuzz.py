"""Fuzzed messages against live agents (issue 15, "Fuzzing and soak").

    python bench/bench_fuzz.py [--messages 100000] [--seed 15] [--real-every 1000]
    python bench/bench_fuzz.py --atheris [--runs N] [--seconds S]

agents   The residual model of tests/unit/graphs.py split over 2 devices, each an `edgepart run`
         process (1 thread, CURVE as by default). A client holding the app's key (so every byte
         reaches request handling: docs/agents.md, "Encryption") sends --messages fuzzed messages
         (tests/unit/wirefuzz.py: raw bytes, msgpack of any shape, headers of right and wrong
         fields, valid messages of every codec damaged by bit flips, cuts and field swaps), half to
         each agent, with a real request through an InferenceSession after every --real-every.
         Printed: messages sent, messages/s (until the agents had handled them all), agent crashes
         (0 expected; a crashed agent is restarted and counted), real requests answered as
         onnxruntime answers them (all expected, during and after), each agent's RSS (VmRSS) and
         open descriptors before and after, RSS growth in % (goal < 10 %).
--atheris  Coverage-guided fuzzing of edgepart.wire.decode and arrays in a process of its own (the
         property of tests/unit/wirefuzz.py's check(); libFuzzer's figures are printed). Needs the
         atheris package; bounded by --runs and --seconds.

Results: bench/results/fuzz.json (and fuzz_atheris.json).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "unit"), str(HERE.parent / "tests" / "e2e")]
from common import save  # noqa: E402

RSS_GOAL = 10.0  # % growth
CHUNK = 2000  # messages made ahead of each burst of sends


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def package(tmp: Path) -> tuple[Path, Path]:
    """The residual model cut after node 2 (r0 crosses) for device-a and device-b, under a model name
    unique to this run (so its plan id is too); returns (dist, model file)."""
    import onnx

    import graphs
    from common import package_cut

    path = tmp / f"residual-fuzz-{secrets.token_hex(3)}.onnx"
    onnx.save(graphs.residual(), str(path))
    package_cut(path, tmp / "dist", {"x": (1, 4, 8, 8)}, 2)
    return tmp / "dist", path


def send_all(sock, frames: list, timeout_s: float = 2.0) -> bool:
    import zmq

    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
        return True
    except zmq.Again:
        if sock.poll(int(timeout_s * 1e3), zmq.POLLOUT):
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        return False


def drain(sock, limit: int = 100_000) -> int:
    n = 0
    while n < limit and sock.poll(0):
        sock.recv_multipart()
        n += 1
    return n


def sync(sock, plan_id: str, timeout_s: float = 30.0) -> bool:
    """A ping answered on this connection: everything sent before it has been handled."""
    import msgpack

    from e2e_helpers import header
    from edgepart.wire import PROTOCOL_VERSION

    sock.send_multipart([header(v=PROTOCOL_VERSION, k="ping", p=plan_id, s="@prober")])
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0 and sock.poll(int(left * 1e3)):
        if msgpack.unpackb(sock.recv_multipart()[0]).get("k") == "pong":
            return True
    return False


def bench_agents(n_messages: int, seed: int, real_every: int) -> dict:
    import numpy as np
    import zmq

    import edgepart
    from e2e_helpers import keyed_dealer, reference
    from edgepart.bundle import load_bundle
    from edgepart.testing.emulate import AgentProcesses
    from wirefuzz import Mutator, Target, check

    out: dict = {"messages": n_messages, "seed": seed, "real_every": real_every, "cpus": os.cpu_count(),
                 "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmpd, ExitStack() as stack:
        tmp = Path(tmpd)
        os.environ.setdefault("EDGEPART_CONFIG_DIR", str(tmp / "config"))  # signing keys of this run only
        dist, model = package(tmp)
        plan = load_bundle(dist / "device-a").plan
        procs = AgentProcesses(dist, interface="127.0.0.1", threads=1)
        stack.callback(procs.stop)
        procs.start()
        procs.wait_ready(30)
        sess = edgepart.InferenceSession(dist, interface="127.0.0.1", timeout_s=30)
        stack.callback(sess.close)
        rng = np.random.default_rng(0)
        feeds = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(16)]
        want = [reference(model, f)["y"] for f in feeds]

        def correct(i: int, y) -> bool:
            return y.shape == want[i].shape and float(np.max(np.abs(y - want[i]))) <= 1e-5

        warm = [sess.submit(feeds[i % 16]) for i in range(64)]
        assert all(correct(i % 16, f.result(30)["y"]) for i, f in enumerate(warm)), "wrong answers before the fuzzing"

        ctx = zmq.Context()
        stack.callback(ctx.term)
        forgers: dict[str, tuple] = {}

        def forger(device: str):
            if device in forgers:
                forgers[device][1].close(0)
            ident = f"fuzzer-{device}".encode()
            s = keyed_dealer(ctx, dist, device)
            s.setsockopt(zmq.IDENTITY, ident)
            s.connect(procs.endpoints[device])
            forgers[device] = (Target.of(plan, device, client=ident), s)
            assert sync(s, plan.plan_id), f"{device} does not answer a ping"

        for d in procs.agents:
            forger(d)
        stack.callback(lambda: [s.close(0) for _, s in forgers.values()])
        devices = sorted(forgers)
        pids = {d: procs.agents[d].proc.pid for d in devices}
        before = {d: {"rss_kb": rss_kb(p), "fds": fds(p)} for d, p in pids.items()}
        print(f"agents {', '.join(f'{d} pid {p}' for d, p in pids.items())}; before: "
              + ", ".join(f"{d} RSS {v['rss_kb'] / 1024:.1f} MiB, {v['fds']} fds" for d, v in before.items()), flush=True)

        m = Mutator(seed)
        outcomes: collections.Counter = collections.Counter()
        per_device: collections.Counter = collections.Counter()
        real, crashes, not_taken, samples = [], [], 0, []
        gen_s = send_s = 0.0
        sent = 0
        t_start = time.perf_counter()
        while sent < n_messages:
            t0 = time.perf_counter()
            chunk = []
            for _ in range(min(CHUNK, n_messages - sent)):
                d = devices[(sent + len(chunk)) % len(devices)]
                msg = m.next(forgers[d][0])
                if msg:
                    outcomes[check(msg)] += 1
                    chunk.append((d, msg))
            gen_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for d, msg in chunk:
                if not send_all(forgers[d][1], msg):
                    not_taken += 1
                sent += 1
                per_device[d] += 1
                if sent % real_every == 0:
                    real.append((sent, sess.submit(feeds[sent % 16])))
                if sent % 64 == 0:
                    for _, s in forgers.values():
                        drain(s)
            send_s += time.perf_counter() - t0
            for d in devices:  # a crashed agent: counted, its output kept, started again
                a = procs.agents[d]
                if a.proc is None or a.proc.poll() is not None:
                    crashes.append({"device": d, "after": sent, "code": a.proc.poll() if a.proc else None,
                                    "output": "\n".join(a.lines[-40:])})
                    procs.restart(d)
                    procs.wait_ready(30)
                    forger(d)
            if sent % 10_000 < CHUNK:
                samples.append({"sent": sent, **{d: rss_kb(procs.agents[d].proc.pid) for d in devices}})
                print(f"  {sent} sent, RSS " + ", ".join(f"{d} {samples[-1][d] / 1024:.1f} MiB" for d in devices), flush=True)
        t0 = time.perf_counter()
        synced = {d: sync(forgers[d][1], plan.plan_id) for d in devices}  # every message handled by now
        sync_s = time.perf_counter() - t0
        total_s = time.perf_counter() - t_start
        assert all(synced.values()), f"agents that did not answer a ping after the fuzzing: {synced}"
        for _, s in forgers.values():
            drain(s)

        after = {d: {"rss_kb": rss_kb(procs.agents[d].proc.pid), "fds": fds(procs.agents[d].proc.pid)} for d in devices}
        amid_ok = 0
        amid_failed = []
        for n, fut in real:
            try:
                ok = correct(n % 16, fut.result(60)["y"])
            except Exception as e:  # noqa: BLE001 - counted and reported
                ok, why = False, repr(e)[:200]
            else:
                why = "wrong answer"
            amid_ok += ok
            if not ok:
                amid_failed.append((n, why))
        final = [sess.submit(feeds[i % 16]) for i in range(200)]
        final_ok = sum(correct(i % 16, f.result(60)["y"]) for i, f in enumerate(final))
        final_ok += sum(correct(i, sess.run(None, feeds[i])[0]) for i in range(16))
        logs = "\n".join(ln for a in procs.agents.values() for ln in a.lines)
        bugs = [ln for ln in logs.splitlines() if any(k in ln for k in ("Traceback", "could not be handled", "crashed"))]
        alive = {d: procs.agents[d].proc is not None and procs.agents[d].proc.poll() is None for d in devices}

    out.update({
        "sent": sent, "not_taken": not_taken, "per_device": dict(per_device), "outcomes_local": dict(outcomes),
        "seconds": total_s, "send_s": send_s, "sync_s": sync_s, "generate_s": gen_s,
        "messages_per_s": sent / (send_s + sync_s), "crashes": len(crashes), "crash_details": crashes,
        "alive_after": alive, "logged_bugs": bugs[:20], "real_amid": len(real), "real_amid_ok": amid_ok,
        "real_amid_failed": amid_failed[:20], "real_after": 216, "real_after_ok": final_ok,
        "before": before, "after": after, "rss_samples_kb": samples, "loadavg_after": os.getloadavg(),
    })
    out["rss_growth_pct"] = {d: 100.0 * (after[d]["rss_kb"] - before[d]["rss_kb"]) / before[d]["rss_kb"] for d in devices}
    out["rss_goal_met"] = all(g < RSS_GOAL for g in out["rss_growth_pct"].values())
    return out


def report(r: dict) -> None:
    print(f"\nfuzzed messages sent: {r['sent']} ({', '.join(f'{d} {n}' for d, n in r['per_device'].items())}); "
          f"not taken within 2 s: {r['not_taken']}")
    lo = r["outcomes_local"]
    print(f"  locally: refused in the header {lo.get('header', 0)}, refused in a tensor {lo.get('tensor', 0)}, "
          f"decoded {lo.get('ok', 0)}")
    print(f"messages/s: {r['messages_per_s']:.0f} (sent and handled: {r['send_s'] + r['sync_s']:.1f} s; "
          f"making them: {r['generate_s']:.1f} s; all: {r['seconds']:.1f} s)")
    print(f"agent crashes: {r['crashes']}; alive after: {r['alive_after']}; lines of bugs logged: {len(r['logged_bugs'])}")
    print(f"real requests answered correctly: amid the fuzzing {r['real_amid_ok']}/{r['real_amid']}, "
          f"after it {r['real_after_ok']}/{r['real_after']}")
    for d in sorted(r["before"]):
        b, a = r["before"][d], r["after"][d]
        print(f"{d}: RSS {b['rss_kb'] / 1024:.1f} -> {a['rss_kb'] / 1024:.1f} MiB ({r['rss_growth_pct'][d]:+.1f} %), "
              f"open fds {b['fds']} -> {a['fds']}")
    print(f"RSS growth < {RSS_GOAL:g} %: {'MET' if r['rss_goal_met'] else 'NOT MET'}; load average "
          f"{r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after (2 shared cores stretch the rate)")


# -- coverage-guided, in process ---------------------------------------------------------------------------

def frames_of(data: bytes) -> list[bytes]:
    """An input's frames: each a 2-byte little-endian length, then that many bytes (at most 70 frames)."""
    frames, i = [], 0
    while i + 2 <= len(data) and len(frames) < 70:
        n = data[i] | data[i + 1] << 8
        frames.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return frames


def bytes_of(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(2, "little") + f for f in frames)


def atheris_child(corpus: str, runs: int, seconds: int, artifacts: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["edgepart"]):
        import edgepart.codecs  # noqa: F401
        import edgepart.wire  # noqa: F401
    from wirefuzz import check

    def one(data: bytes) -> None:
        check(frames_of(data))  # WireError is caught inside; anything else is a finding

    atheris.Setup([sys.argv[0], corpus, f"-runs={runs}", f"-max_total_time={seconds}", "-max_len=8192",
                   "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={artifacts}", "-print_final_stats=1"], one)
    atheris.Fuzz()


def bench_atheris(runs: int, seconds: int) -> dict:
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("--atheris needs the atheris package (pip install atheris; a wheel exists for CPython 3.11 on "
              "x86-64 Linux)")
        raise SystemExit(2)
    from wirefuzz import OFFLINE, ROUTES, Mutator, valid

    with tempfile.TemporaryDirectory() as tmpd:
        corpus = Path(tmpd) / "corpus"
        corpus.mkdir()
        seeds = [valid(OFFLINE, r, s, 1, 100.0) for r in ROUTES for s in range(2)]
        m = Mutator(1)
        seeds += [m.next(OFFLINE) for _ in range(50)]
        for i, f in enumerate(seeds):
            (corpus / f"seed{i}").write_bytes(bytes_of(f))
        artifacts = HERE / "results" / "atheris-"
        artifacts.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--atheris-child", str(corpus), "--runs", str(runs), "--seconds",
                            str(seconds), "--artifacts", str(artifacts)], capture_output=True, text=True,
                           timeout=seconds + 300)
        took = time.perf_counter() - t0
    text = p.stdout + p.stderr
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    crashed = "==ERROR" in text or "Uncaught Python exception" in text or p.returncode not in (0,)
    r = {"runs_asked": runs, "seconds_asked": seconds, "returncode": p.returncode, "seconds": took,
         "runs": int(done[-1][0]) if done else None, "coverage": int(cov[-1][0]) if cov else None,
         "features": int(cov[-1][1]) if cov else None, "finding": crashed,
         "tail": text[-3000:] if crashed else text[-600:]}
    print(text[-1500:] if crashed else "\n".join(text.splitlines()[-6:]))
    print(f"\natheris: {r['runs']} inputs in {took:.0f} s, coverage {r['coverage']} edges, {r['features']} features; "
          f"{'A FINDING (input under ' + str(artifacts) + '*)' if crashed else 'no finding'}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="fuzzed messages to send (default 100000)")
    ap.add_argument("--seed", type=int, default=15, help="the generator's seed (default 15)")
    ap.add_argument("--real-every", type=int, default=1000, help="a real request after every N fuzzed messages")
    ap.add_argument("--atheris", action="store_true", help="coverage-guided fuzzing of decode in process instead")
    ap.add_argument("--runs", type=int, default=200_000, help="--atheris: inputs to try (default 200000)")
    ap.add_argument("--seconds", type=int, default=120, help="--atheris: at most this long (default 120)")
    ap.add_argument("--atheris-child", metavar="CORPUS", help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.atheris_child:
        atheris_child(a.atheris_child, a.runs, a.seconds, a.artifacts)
        return
    if a.atheris:
        r = bench_atheris(a.runs, a.seconds)
        print(f"results: {save('fuzz_atheris', r)}")
        raise SystemExit(1 if r["finding"] else 0)
    r = bench_agents(a.messages, a.seed, a.real_every)
    report(r)
    print(f"results: {save('fuzz', r)}")


if __name__ == "__main__":
    main()
