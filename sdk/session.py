"""`edgepart.InferenceSession`: call a cluster as if it were one onnxruntime session.

    sess = edgepart.InferenceSession("dist/")               # finds the agents of that plan
    out = sess.run(None, {"input": x})                       # like onnxruntime: a list, in output order
    futures = [sess.submit({"input": x}) for x in frames]    # pipelined; each future gives a dict
    out = await sess.arun(None, {"input": x})                # from async code

The network side (agent/app/client.py) runs on the process's one background event loop (edgepart.aio);
this class is the thin sync facade over it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import aio
from .bundle import Bundle, is_bundle, load_bundle, load_dist, load_fallbacks
from .errors import BundleError, EdgepartError, PeerError
from .keys import DEVICE_KEY, Credentials, Keys, client_key_path, read_keypair
from .plan import Plan, TensorSpec

log = logging.getLogger("edgepart")


class NodeArg:
    """Like onnxruntime's NodeArg: name, shape, type."""

    def __init__(self, spec: TensorSpec):
        self.name, self.shape = spec.name, list(spec.shape)
        self.type = f"tensor({'float' if spec.dtype == 'float32' else 'double' if spec.dtype == 'float64' else spec.dtype})"

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape})"


def plan_of(path: str | Path | Plan | Bundle) -> Plan:
    return _read(path)[0]


def _read(path: str | Path | Plan | Bundle) -> tuple[Plan, Keys, Path | None, Path | None]:
    """(plan, its public link keys, the dist/ folder, the bundle folder given) of what a session is given."""
    if isinstance(path, Plan):
        return path, Keys(), None, None
    b = path if isinstance(path, Bundle) else load_bundle(path, verify_files=False) if is_bundle(path) else None
    if b is not None:
        return b.plan, b.keys, b.path.parent, b.path
    first = next(iter(load_dist(path, verify_files=False).values()))
    return first.plan, first.keys, Path(path), None


def session_credentials(path: str | Path | Plan | Bundle, key: str | Path | None = None,
                        insecure: bool = False) -> tuple[Plan, Credentials]:
    """The plan and the keys a session talks to it with (docs/agents.md, "Encryption"): `key`, else
    the app's key beside the bundles (dist/app.key), else the device's own key when given one bundle
    (an app on that device)."""
    plan, keys, dist, bundle = _read(path)
    if insecure:
        log.warning("this session runs --insecure: its links are plaintext and unauthenticated")
        return plan, Credentials(None, Keys())
    if isinstance(path, Plan):
        raise BundleError("A session given a Plan has no link keys: give the dist/ folder (or one bundle) with "
                          "the app's key beside it, or insecure=True for agents started with --insecure.")
    if not keys.secure:
        raise BundleError(f"The bundles of {path} were packaged with --insecure (no link keys): open the session "
                          f"with insecure=True (`--insecure`), or package again without --insecure.")
    candidates = [Path(key)] if key is not None else [
        p for p in (client_key_path(dist) if dist else None, bundle / DEVICE_KEY if bundle else None) if p is not None]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise BundleError(f"No key to talk to plan {plan.plan_id} with: {candidates[0]} is missing. Copy app.key "
                          f"from the workstation's dist/ folder there, or give key= (`--key`); "
                          f"`edgepart keys add-client DIST --name NAME` makes a key for another app.")
    me = read_keypair(found)
    if me.public not in keys.allowed():
        raise BundleError(f"{found} is not a key of plan {plan.plan_id}: its agents would refuse it. Use the "
                          f"app.key packaged with these bundles, or add this client with `edgepart keys add-client`.")
    return plan, Credentials(me, keys)


def session_fallbacks(path: str | Path | Plan | Bundle, credentials: Credentials,
                      insecure: bool = False) -> dict[str, tuple[Plan, Credentials]]:
    """The fallback plans packaged with the session's plan (docs/failover.md), by the device each does
    without, with the keys this session talks to each with: {} where there are none (a plan given as
    a value, an older packaging, a cluster without standby devices). A fallback plan whose keys do not
    take this session's key is left out, with a warning."""
    if isinstance(path, Plan):
        return {}
    dist = (path.path.parent if isinstance(path, Bundle) else Path(path).parent if is_bundle(path) else Path(path))
    out: dict[str, tuple[Plan, Credentials]] = {}
    for without, bundles in load_fallbacks(dist, verify_files=False, complete=False).items():
        b = next(iter(bundles.values()))
        if insecure:
            out[without] = (b.plan, Credentials(None, Keys()))
        elif credentials.me is not None and credentials.me.public in b.keys.allowed():
            out[without] = (b.plan, Credentials(credentials.me, b.keys))
        else:
            log.warning("the fallback plan %s (for when %s fails) does not take this session's key: left out. "
                        "Copy the fallback folders and app.key from one packaging.", b.plan_id, without)
    return out


class InferenceSession:
    """A session over a whole cluster; `path` is the dist/ folder or any one bundle. Its links are
    encrypted with the app's key beside the bundles (dist/app.key) or `key`; `insecure` only for
    agents started with --insecure (docs/agents.md, "Encryption"). A plan with sources needs
    `source`: whose requests this session sends (docs/priority.md, "Plans with sources")."""

    def __init__(self, path: str | Path | Plan | Bundle, *, interface: str | None = None,
                 peers: Sequence[str] = (), timeout_s: float = 10.0, discover_timeout_s: float = 10.0,
                 key: str | Path | None = None, insecure: bool = False, source: str | None = None):
        from edgepart.agent.app import ClusterClient, FailoverClient  # the network side: pyzmq, zeroconf
        from edgepart.agent.app.client import source_view

        self.plan, credentials = session_credentials(path, key, insecure)
        self.source = source or ""
        source_view(self.plan, self.source)  # a plan with sources needs one of them, a plan without none
        self.timeout_s = timeout_s
        # with fallback plans (standby devices), requests go to the one that does without a failed
        # device, each retried there once (docs/failover.md); without, a failure is a PeerError at once
        fallbacks = session_fallbacks(path, credentials, insecure)
        aio.acquire()
        kw = dict(interface=interface, peers=tuple(peers), discover_timeout_s=discover_timeout_s, credentials=credentials)
        client = (FailoverClient(self.plan, fallbacks, **kw) if fallbacks
                  else ClusterClient(self.plan, source=self.source, **kw))
        try:
            aio.call(client.start(), discover_timeout_s + 10)
        except BaseException:
            aio.release()
            raise
        self._client: "ClusterClient | FailoverClient | None" = client

    # -- onnxruntime-like -----------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(s) for s in self.plan.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(s) for s in self.plan.outputs]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray],
            run_options: object = None, *, timeout_s: float | None = None) -> list[np.ndarray]:
        """Outputs in the order of `output_names` (all of them when None), like onnxruntime."""
        t = timeout_s or self.timeout_s
        if self._client is None:
            raise PeerError("the session is closed")
        # a first stage embedded in this process runs in this thread: the caller waits anyway
        return self._select(output_names, self._client.run(input_feed, t))

    def submit(self, input_feed: Mapping[str, np.ndarray], *, timeout_s: float | None = None) -> "concurrent.futures.Future[dict[str, np.ndarray]]":
        """Send one request now; the future gives {output name: array}. Pipelined: submit many."""
        if self._client is None:
            raise PeerError("the session is closed")
        return self._client.submit(input_feed, timeout_s or self.timeout_s)

    async def arun(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray],
                   *, timeout_s: float | None = None) -> list[np.ndarray]:
        """`run` for async code: awaits without blocking the caller's event loop."""
        res = await asyncio.wrap_future(self.submit(input_feed, timeout_s=timeout_s))
        return self._select(output_names, res)

    @property
    def fallbacks(self) -> dict[str, str]:
        """{device: the plan id of the fallback plan for when it fails}, as packaged (docs/failover.md)."""
        fb = getattr(self._client, "fallbacks", None) or {}
        return {d: c.plan.plan_id for d, c in fb.items()}

    @property
    def active_plan_id(self) -> str:
        """The plan requests go to now: the primary plan's id, or a fallback plan's after a failure."""
        c = self._client
        if c is None or not hasattr(c, "current"):
            return self.plan.plan_id
        return c.current().plan.plan_id

    def _select(self, names: Sequence[str] | None, res: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(names) if names else [o.name for o in self.plan.outputs]
        unknown = [n for n in names if n not in res]
        if unknown:
            raise EdgepartError(f"Unknown output(s) {', '.join(unknown)}; the model's outputs are "
                                f"{', '.join(o.name for o in self.plan.outputs)}.")
        return [res[n] for n in names]

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            aio.call(client.close(), 10)
        except Exception:  # closing never raises
            pass
        aio.release()

    def __enter__(self) -> "InferenceSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_client", None) is not None:
                self.close()
        except Exception:
            pass
