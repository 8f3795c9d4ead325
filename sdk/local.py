"""Run a whole plan in one process, steps chained in order: for `verify`, tests and the demo.

This is what the cluster computes, without the network: each step runs as soon as the tensors it
needs exist, exactly as the agents will run it. Each device's steps run on the providers its plan
names (`plan_providers`: CPU unless cluster.yaml named others, those this build lacks skipped),
never on an accelerator this machine happens to have: `verify` and reports check the plan's
numbers, not this machine's (docs/agents.md, "Execution providers").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from .bundle import Bundle, load_dist
from .errors import BundleError
from .plan import Plan
from .runtime import Providers, make_step_session, plan_providers
from .wire import roundtrip


@dataclass
class LocalCluster:
    """Every step of a plan as onnxruntime sessions in this process."""

    plan: Plan
    sessions: dict[str, object]
    providers: dict[str, Providers] = field(default_factory=dict)  # per device, what its ONNX steps run on
    step_ms: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_dist(cls, dist: Path | str, threads: int = 0) -> "LocalCluster":
        bundles = load_dist(dist)
        return cls.from_bundles(bundles, threads)

    @classmethod
    def from_bundles(cls, bundles: Mapping[str, Bundle], threads: int = 0) -> "LocalCluster":
        plan = next(iter(bundles.values())).plan
        sessions = {}
        providers = {d.name: plan_providers(d.providers) for d in plan.devices}
        for st in plan.steps:
            b = bundles[st.device]
            sessions[st.name] = make_step_session(b.file(st.model_file), st, providers[st.device], threads)
        return cls(plan, sessions, providers)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All model outputs, by name, for one set of model inputs."""
        missing = [i.name for i in self.plan.inputs if i.name not in feeds]
        if missing:
            raise BundleError(f"Missing model input(s): {', '.join(missing)}. The model takes: "
                              f"{', '.join(i.name for i in self.plan.inputs)}.")
        env: dict[str, np.ndarray] = {i.name: np.asarray(feeds[i.name]) for i in self.plan.inputs}
        codecs = {(r.tensor, r.dst): {r.tensor: r.codec} for r in self.plan.routes if r.codec.kind != "dense"}
        pending = list(self.plan.steps)
        while pending:
            ready = next((s for s in pending if all(i.name in env for i in s.inputs)), None)
            if ready is None:
                raise BundleError("The plan's steps cannot all run: some input is never produced. Package again.")
            pending.remove(ready)
            # what this device receives: each input as its route's codec delivers it (lossy codecs too)
            feeds_in = {i.name: roundtrip({i.name: env[i.name]}, codecs.get((i.name, ready.device)))[i.name]
                        for i in ready.inputs}
            t0 = time.perf_counter()
            outs = self.sessions[ready.name].run([o.name for o in ready.outputs], feeds_in)
            self.step_ms.setdefault(ready.name, []).append((time.perf_counter() - t0) * 1e3)
            env.update({o.name: v for o, v in zip(ready.outputs, outs)})
        return {o.name: env[o.name] for o in self.plan.outputs}
