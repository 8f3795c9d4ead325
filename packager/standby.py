"""Standby devices and fallback plans (docs/failover.md).

A cluster.yaml device marked `standby: true` is a spare: the primary plan is planned over the other
devices exactly as it would be without it (so a cluster without spares keeps its plan ids), and for
each primary device D the packager compiles, in advance and with the same strategy, objective and
options, a fallback plan over the primaries without D plus the spares. Agents only execute: every
device serves its bundles of all of them, warm, and the session switches plan when D stops answering.

The first half is pure (which plans, over which devices); `package_fallbacks` and `install` write
them: each fallback plan is packaged like any plan into a scratch folder, then moved into
`dist/<device>/fallback/<D>/` with the link keys of the primary packaging (one keypair per device,
the spares' made here; docs/bundle-format.md, "Fallback plans") and signed as every manifest is.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from edgepart.bundle import FALLBACKS, is_bundle
from edgepart.errors import PlanningError
from edgepart.keys import DEVICE_KEY, KeyPair, Keys, new_keypair, read_keypair, write_keypair
from edgepart.plan import Plan

from edgepart.packager import seal
from edgepart.packager.cluster import Cluster
from edgepart.packager.strategies import base


# -- pure: which plans, over which devices -----------------------------------------------------------

def spares(cluster: Cluster) -> tuple[str, ...]:
    """The standby devices, in cluster.yaml order."""
    return tuple(d.name for d in cluster.devices if d.standby)


def _over(cluster: Cluster, names: set[str]) -> Cluster:
    """`cluster` restricted to `names` (cluster.yaml order kept), every one of them a plain device."""
    devices = tuple(dataclasses.replace(d, standby=False) for d in cluster.devices if d.name in names)
    pairs = tuple(p for p in cluster.pair_links if p[0] in names and p[1] in names)
    # the app's device gone, the app is gone with it: a fallback plans as for an app of its own host
    kept = cluster.caller in names
    return Cluster(devices, cluster.default_link, pairs, cluster.caller if kept else None,
                   cluster.caller_ms if kept else 0.0)


def primary_cluster(cluster: Cluster) -> Cluster:
    """The devices the primary plan is planned over: all but the spares. A cluster without spares is
    returned as it is, so its plan (and plan id) does not change."""
    if not spares(cluster):
        return cluster
    return _over(cluster, {d.name for d in cluster.devices if not d.standby})


@dataclass(frozen=True)
class FallbackCluster:
    """The cluster a fallback plan is planned over: the primaries without `without`, and the spares."""

    without: str
    cluster: Cluster

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.cluster.devices)


def fallback_clusters(cluster: Cluster) -> tuple[FallbackCluster, ...]:
    """One fallback per primary device, in cluster.yaml order; none without spares."""
    if not spares(cluster):
        return ()
    everyone = {d.name for d in cluster.devices}
    return tuple(FallbackCluster(d.name, _over(cluster, everyone - {d.name}))
                 for d in cluster.devices if not d.standby)


def fallback_folder(dist: Path, device: str, without: str) -> Path:
    """Where `device`'s bundle of the fallback plan that does without `without` goes."""
    return Path(dist) / device / FALLBACKS / without


def plan_keys(plan: Plan, keypairs: Mapping[str, KeyPair], clients: Mapping[str, str]) -> Keys:
    """The public keys a plan's manifests carry: its own devices' (from the packaging's one set of
    keypairs, so a device has one key in every plan it is part of) and the clients'."""
    return Keys({d: keypairs[d].public for d in plan.device_names()}, clients)


def over_memory(cluster: Cluster, held: Mapping[str, Mapping[str, int]]) -> list[str]:
    """What to say of each device whose plans, all served at once (agent/device/standby.py), hold
    more model bytes than its `memory_mb`: `held` is {device: {plan label: bytes}}. Each plan was
    planned within the device's memory; their sum is not (docs/failover.md, "Limits")."""
    out = []
    for d in cluster.devices:
        plans = held.get(d.name, {})
        total = sum(plans.values())
        if len(plans) > 1 and total > d.memory_bytes:
            parts = ", ".join(f"{label} {n / 2**20:.1f} MB" for label, n in plans.items())
            out.append(f"{d.name} serves {len(plans)} plans at once ({parts}): {total / 2**20:.1f} MB of steps, more "
                       f"than its memory_mb {d.memory_mb:g}. Give it more memory_mb if it has it, or fewer "
                       f"devices a fallback on it (docs/failover.md).")
    return out


def held_bytes(bundle_dirs: Mapping[str, Path], fallbacks) -> dict[str, dict[str, int]]:
    """{device: {plan label: bytes of its step files}} over a packaging's primary bundles and its
    fallback plans (`base.FallbackPlan`s): what each device loads at once, for `over_memory`."""
    held: dict[str, dict[str, int]] = {}
    for d, folder in bundle_dirs.items():
        held.setdefault(d, {})["primary"] = bundle_bytes(folder)
    for fb in fallbacks:
        for d, folder in fb.bundle_dirs.items():
            held.setdefault(d, {})[f"without {fb.without}"] = bundle_bytes(folder)
    return held


def bundle_bytes(folder: Path) -> int:
    """The bytes of a bundle's step files (what its agent loads), not counting a nested fallback/."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.is_file() and p.name not in ("manifest.json", DEVICE_KEY))


# -- writing ---------------------------------------------------------------------------------------------

@dataclass
class Compiled:
    """Fallback plans packaged into a scratch folder, not yet in dist/ (see `install`)."""

    scratch: Path
    results: list[tuple[str, base.Packaged]]

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def package_fallbacks(strategy: base.Strategy, job: base.Job, full: Cluster, out: Path,
                      convert: Callable[[base.Packaged, Cluster], base.Packaged] | None = None) -> Compiled:
    """Package every fallback plan of `full` with `strategy` and `job`'s model and options, each into a
    scratch folder beside `out`. A fallback that cannot be planned stops packaging, naming it."""
    out = Path(out)
    parent = out.parent if out.parent.exists() else None
    scratch = Path(tempfile.mkdtemp(prefix=".edgepart-fallbacks-", dir=parent))
    done = Compiled(scratch, [])
    try:
        for fb in fallback_clusters(full):
            job.say(f"planning the fallback plan without {fb.without}")
            sub = dataclasses.replace(job, cluster=fb.cluster)
            try:
                res = strategy.package(sub, scratch / fb.without / "dist")
                if convert is not None:
                    res = convert(res, fb.cluster)
            except PlanningError as e:
                raise PlanningError(f"The fallback plan for when {fb.without} fails (over {', '.join(fb.devices)}) "
                                    f"cannot be planned: {e} Give the spares more memory, or mark fewer "
                                    f"devices standby (docs/failover.md).") from None
            done.results.append((fb.without, res))
    except BaseException:
        done.discard()
        raise
    return done


def install(compiled: Compiled, out: Path, sealing: seal.Sealing) -> list[base.FallbackPlan]:
    """Move the fallback bundles into `out/<device>/fallback/<D>/`, with the primary packaging's keys:
    every device keeps its key (`out/<device>/device.key`), the spares get one each (in every
    fallback folder of theirs), and every manifest carries the keys of its plan's devices and the
    clients' keys of the primary bundles, signed (docs/bundle-format.md, "Fallback plans")."""
    out = Path(out)
    try:
        for folder in out.iterdir():  # fallbacks of an earlier packaging (the primaries' went with their folders)
            if folder.is_dir() and (folder / FALLBACKS).is_dir():
                shutil.rmtree(folder / FALLBACKS)
                if not is_bundle(folder) and not any(folder.iterdir()):
                    folder.rmdir()
        primaries = sorted(p.name for p in out.iterdir() if is_bundle(p))
        keypairs: dict[str, KeyPair] = {}
        clients: dict[str, str] = {}
        if not sealing.insecure and primaries:
            keypairs = {d: read_keypair(out / d / DEVICE_KEY) for d in primaries}
            clients = dict(seal.keys_of(out / primaries[0]).clients)
        made: list[base.FallbackPlan] = []
        for without, res in compiled.results:
            dirs: dict[str, Path] = {}
            for d, path in res.bundle_dirs.items():
                target = fallback_folder(out, d, without)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), target)
                (target / DEVICE_KEY).unlink(missing_ok=True)
                if not sealing.insecure:
                    if d not in keypairs:  # a spare: one key for all its fallback plans
                        keypairs[d] = new_keypair(d)
                    write_keypair(target / DEVICE_KEY, keypairs[d])
                dirs[d] = target
            keys = Keys() if sealing.insecure else plan_keys(res.plan, keypairs, clients)
            for d, target in dirs.items():
                seal.write_manifest(target, res.plan, d, keys, sealing)
            made.append(base.FallbackPlan(without, res.plan, dirs))
        return made
    finally:
        compiled.discard()

