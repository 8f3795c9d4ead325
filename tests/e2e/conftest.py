"""End-to-end tests: real `edgepart run` processes, real sockets, real mDNS, on loopback and across
network namespaces. No mocks.

Fixtures here own every resource a test makes and always release it: agent processes (`agents`),
emulated LANs (`lan`), sessions (`sessions`). An autouse check then fails the test if anything
outlived it: a Python or native thread of this process, a child process (zombies too), or a
namespace of ours. Models are packaged into the test's tmp dir with plan ids unique to this run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "unit")]  # e2e_helpers, and graphs (the onnx.helper models)

LAN_PREFIX = "epe"  # not the library's default "ep", so nobody's cleanup_stale() of "ep" touches ours
LEAK_WAIT_S = 5.0


# -- leak checks ------------------------------------------------------------------------------------

def _children() -> set[int]:
    """Pids whose parent is this process, zombies included (an unwaited child is a leak too)."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            found.add(int(entry))
    return found


def _tids() -> set[int]:
    """Every thread of this process, native ones (onnxruntime, libzmq) included."""
    return {int(t) for t in os.listdir("/proc/self/task")}


def _describe_pid(pid: int, task: bool = False) -> str:
    base = f"/proc/self/task/{pid}" if task else f"/proc/{pid}"
    try:
        with open(f"{base}/comm") as f:
            comm = f.read().strip()
        cmd = "" if task else open(f"{base}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {comm} {cmd}".strip()


def _our_namespaces() -> list[str]:
    mine = f"{LAN_PREFIX}-{os.getpid():x}-"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(mine)]


class LeakCheck:
    """What exists now; `assert_clean()` waits (bounded) for everything newer to go away."""

    def __init__(self):
        self.threads = set(threading.enumerate())
        self.tids = _tids()
        self.children = _children()

    def leftovers(self) -> list[str]:
        out = [f"thread {t.name!r}" for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        out += [f"native thread {_describe_pid(t, task=True)}" for t in sorted(_tids() - self.tids)]
        out += [f"child process {_describe_pid(p)}" for p in sorted(_children() - self.children)]
        return out

    def assert_clean(self, what: str) -> None:
        end = time.monotonic() + LEAK_WAIT_S
        while (left := self.leftovers()) and time.monotonic() < end:
            time.sleep(0.05)
        assert not left, f"{what} leaked (still there {LEAK_WAIT_S:g} s after it ended):\n  " + "\n  ".join(left)
        ns = _our_namespaces()
        assert not ns, f"{what} left network namespaces behind: {ns}"


@pytest.fixture(scope="session", autouse=True)
def warm_imports():
    """Start the process-lifetime threads of libraries before any baseline is taken: they are not
    leaks of the test that happened to use them first. onnxruntime starts one on import; pyzmq
    starts its zero-copy garbage collector (a thread and a context) on the first large copy=False
    send and keeps it until exit."""
    import onnxruntime  # noqa: F401
    import zeroconf  # noqa: F401
    from zmq.utils.garbage import gc

    if not gc.is_alive():
        gc.start()
    # The real inputs of the reference models: scikit-learn's photos start a thread pool, the
    # tokenizers library a pool of its own, both kept for the life of the process.
    try:
        from edgepart.errors import MissingExtraError
        from edgepart.testing import zoo

        zoo.imagenet_inputs(1)
        zoo.sentence_inputs(["one two three"])
        # On a first run (empty cache) exporting a model starts torch's thread pools, which live
        # as long as the process: export here, before any baseline is taken.
        zoo.efficientnet_lite0(), zoo.minilm(), zoo.ppocr_det()
    except (ImportError, MissingExtraError):
        pass  # no models extra: the tests that need them are skipped

    import edgepart.agent  # noqa: F401
    import edgepart.agent.app  # noqa: F401


@pytest.fixture(autouse=True)
def no_leaks(request):
    check = LeakCheck()
    yield
    check.assert_clean(request.node.name)


@pytest.fixture(scope="module", autouse=True)
def no_leaks_in_module(request):
    check = LeakCheck()
    yield
    check.assert_clean(f"module {request.node.name}")


# -- resources ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def packaged(tmp_path_factory):
    """packaged(model, n_devices, **kw) -> Packaged: a model (onnx.ModelProto or path) planned for
    dev0..dev<n-1> from a cluster.yaml written beside it (objective `throughput`, so cuts fall
    mid-network) and packaged into a fresh tmp dir, with a plan id unique to this run. See
    e2e_helpers.package_model for the keywords (real=, shapes=, gflops=, tag=)."""
    from e2e_helpers import package_model

    return lambda model, n, **kw: package_model(model, tmp_path_factory.mktemp("packaged"), n, **kw)


class AgentPool:
    """Starts AgentProcesses and remembers them, so they are stopped whatever the test does."""

    def __init__(self):
        self.started = []

    def __call__(self, dist, *, ready: bool = True, timeout_s: float = 60, **kw):
        from edgepart.testing.emulate import AgentProcesses

        kw.setdefault("interface", "127.0.0.1")
        procs = AgentProcesses(dist, **kw)
        self.started.append(procs)
        procs.start(timeout_s)
        if ready:
            procs.wait_ready(30)
        return procs

    def many(self, dists, *, ready: bool = True, timeout_s: float = 60, **kw) -> list:
        """AgentProcesses for several dists, every process started before any is waited for.

        (From this thread: the harness ties each agent's life to the thread that started it.)"""
        from edgepart.testing.emulate import AgentProcesses

        kw.setdefault("interface", "127.0.0.1")
        made = [AgentProcesses(d, **kw) for d in dists]
        self.started.extend(made)
        for procs in made:
            for a in procs.agents.values():
                a.start()
        for procs in made:
            for a in procs.agents.values():
                a.wait_started(timeout_s)
        if ready:
            for procs in made:
                procs.wait_ready(timeout_s)
        return made

    def stop(self):
        import signal

        # SIGTERM every agent first, so they say their mDNS goodbyes in parallel, then wait for each
        for procs in self.started:
            for a in procs.agents.values():
                a.signal(signal.SIGTERM)
        errors = []
        for procs in reversed(self.started):
            try:
                procs.stop()
            except Exception as e:  # stop the others anyway
                errors.append(e)
        self.started.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def agents():
    """agents(dist, **AgentProcesses kwargs) -> started (and by default ready) AgentProcesses."""
    pool = AgentPool()
    yield pool
    pool.stop()


@pytest.fixture(scope="class")
def class_agents():
    """`agents` for the tests of one class (a fleet of clusters shared by them)."""
    pool = AgentPool()
    yield pool
    pool.stop()


class SessionPool:
    def __init__(self):
        self.opened = []

    def __call__(self, dist, **kw):
        import edgepart

        kw.setdefault("interface", "127.0.0.1")
        s = edgepart.InferenceSession(dist, **kw)
        self.opened.append(s)
        return s

    def many(self, dists, **kw) -> list:
        """One session per dist, discovering at the same time (each takes about a second of mDNS)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(dists), thread_name_prefix="open-session") as pool:
            return list(pool.map(lambda d: self(d, **kw), dists))

    def close(self):
        for s in reversed(self.opened):
            s.close()
        self.opened.clear()


@pytest.fixture
def sessions():
    """sessions(dist, **InferenceSession kwargs) -> an open session, closed after the test."""
    pool = SessionPool()
    yield pool
    pool.close()


@pytest.fixture(scope="class")
def class_sessions():
    pool = SessionPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def netns_ok() -> None:
    from edgepart.testing import netns

    reason = netns.available()
    if reason is not None:
        pytest.fail(f"emulated LANs are impossible here: {reason}")


@pytest.fixture
def lan(netns_ok):
    """lan(n_hosts, **EmulatedLan kwargs) -> an EmulatedLan, closed after the test."""
    from edgepart.testing.netns import EmulatedLan

    made = []

    def make(n_hosts: int, **kw):
        kw.setdefault("prefix", LAN_PREFIX)
        kw.setdefault("subnet", f"10.{213 + len(made)}.7.0/24")
        made.append(EmulatedLan(n_hosts, **kw))
        return made[-1]

    yield make
    for m in reversed(made):
        m.close()
