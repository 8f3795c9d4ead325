"""Write bundles: every step's sub-model into its device's folder, then every device's key and signed
manifest (seal.py), staged in a temporary folder and moved into place, so a failure never leaves half a `dist/`.

Every strategy ends here: it hands over its steps (sub-models still in memory) and a function that
builds the plan once the files' hashes are known.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import onnx

from edgepart.bundle import is_device_folder, sha256_file
from edgepart.errors import BundleError, PlanningError
from edgepart.keys import CLIENT_KEY_SUFFIX
from edgepart.plan import CALLER, DeviceSpec, Hints, Plan, Route, Step, TensorSpec

from edgepart.packager import seal
from edgepart.packager.model import submodel as emit


def model_plan(strategy: str, graph, cluster, steps: Sequence[Step], routes: Sequence[Route], model_name: str,
               objective: str, estimates: tuple[tuple[str, float], ...]) -> Plan:
    """The Plan of any strategy: the whole model's identity and interface, the cluster's devices,
    and the strategy's steps, routes and estimates."""
    steps, routes = tuple(steps), tuple(routes)
    return Plan(
        strategy=strategy,
        model_name=model_name,
        model_sha256=graph.sha256,
        inputs=graph.inputs,
        outputs=graph.outputs,
        devices=tuple(DeviceSpec(d.name, d.providers, d.threads) for d in cluster.devices),
        steps=tuple(steps),
        routes=tuple(routes),
        objective=objective,
        estimates=estimates,
        hints=fast_path_hints(steps, routes),
    )


def fast_path_hints(steps: Sequence[Step], routes: Sequence[Route]) -> Hints:
    """Where requests enter and leave the cluster (edgepart.plan.Hints), read off the routes: the app's
    client picks a request's fast path from these, whatever strategy made the plan."""
    fed = {r.dst for r in routes if r.src == CALLER}
    entry = next(iter(fed)) if len(fed) == 1 else ""
    answering = {r.src for r in routes if r.dst == CALLER} - {entry}
    exit_ = next(iter(answering)) if len(answering) == 1 else ""
    entry_step = ""
    own = [s for s in steps if s.device == entry]
    if len(own) == 1:
        senders: dict[str, set[str]] = {}
        for r in routes:
            if r.dst == entry:
                senders.setdefault(r.tensor, set()).add(r.src)
        inputs = {i.name for i in own[0].inputs}
        if inputs == {r.tensor for r in routes if r.src == CALLER} and all(senders.get(n) == {CALLER} for n in inputs):
            entry_step = own[0].name
    return Hints(entry, entry_step, exit_)


@dataclass(frozen=True, eq=False)
class StepModel:
    """A step before it is written: its sub-model and what the plan says about it."""

    name: str
    device: str
    file: str
    model: onnx.ModelProto
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    nodes: int
    estimated_ms: float


def write_bundles(step_models: Sequence[StepModel], make_plan: Callable[[list[Step]], Plan], out_dir: Path,
                  external_data_min_bytes: int = emit.EXTERNAL_DATA_MIN_BYTES,
                  progress: Callable[[str], None] | None = None) -> tuple[Plan, dict[str, Path]]:
    """Write the steps and manifests into `out_dir/<device>/`; returns the plan and the folders."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        stale = [p for p in out_dir.iterdir() if not is_device_folder(p)  # (a standby device's: fallbacks only)
                 and not (p.is_file() and p.name.endswith(CLIENT_KEY_SUFFIX))]  # the clients' keys (seal.py)
        if stale:
            raise BundleError(f"{out_dir} exists and holds things that are not edgepart bundles "
                              f"({stale[0].name}, ...). Give an empty or new folder with -o.")
    staging = Path(tempfile.mkdtemp(prefix=".edgepart-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        steps: list[Step] = []
        written: dict[tuple[str, str], tuple] = {}  # (device, file) -> (model, its files' names and hashes)
        for sm in step_models:
            ddir = staging / sm.device
            ddir.mkdir(parents=True, exist_ok=True)
            done = written.get((sm.device, sm.file))
            if done is None:  # steps that name one file share it: it is written once (lanes.py)
                if progress:
                    progress(f"writing {sm.name} for {sm.device}")
                files = emit.save(sm.model, ddir / sm.file, external_data_min_bytes)
                done = written[(sm.device, sm.file)] = (sm.model, [(f.name, sha256_file(f)) for f in files])
            elif done[0] is not sm.model:
                raise PlanningError(f"steps {sm.name} and another on {sm.device} name one file, {sm.file}, for "
                                    f"different models")
            (model_file, sha), *data = done[1]
            steps.append(Step(name=sm.name, device=sm.device, model_file=model_file, sha256=sha,
                              inputs=sm.inputs, outputs=sm.outputs, data_files=tuple(data),
                              nodes=sm.nodes, estimated_ms=sm.estimated_ms))
        plan = make_plan(steps)
        clients = seal.seal(staging, out_dir, plan)  # link keys and signed manifests
        out_dir.mkdir(parents=True, exist_ok=True)
        dirs = {}
        for d in plan.device_names():
            target = out_dir / d
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(staging / d), target)
            dirs[d] = target
        for old in out_dir.iterdir():  # bundles of devices no longer in the cluster would confuse `run`
            if old.name not in dirs and is_device_folder(old):  # (a spare's folder is written again: standby.py)
                shutil.rmtree(old)
        seal.write_clients(out_dir, clients)
        return plan, dirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
