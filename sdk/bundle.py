"""A bundle: one device's folder, with its manifest and sub-model files, loaded and checked.

    dist/<device>/manifest.json   format, schema version, device, plan id, the whole plan, file hashes
    dist/<device>/<step>.onnx     the sub-models this device runs (and external-data files)

Loading verifies the schema version, that the manifest's plan hashes to its plan id, and the sha256
of every file, and says exactly what is wrong when something does not match.

A device's folder may also hold, under `fallback/<device>/`, its bundles of the fallback plans the
packager compiled for when that device fails (docs/failover.md, docs/bundle-format.md "Fallback
plans"); a standby device's folder holds only those. Each is an ordinary bundle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import BundleError
from .keys import DEVICE_KEY, KeyPair, Keys, read_keypair
from .plan import READS, SCHEMA_VERSION, Plan, Step
from .signing import verify_manifest

MANIFEST = "manifest.json"
FORMAT = "edgepart-bundle"
FALLBACKS = "fallback"  # dist/<device>/fallback/<the device it replaces>/: a fallback plan's bundle


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: the device it is for, the plan, and where its files are."""

    path: Path
    device: str
    plan: Plan
    keys: Keys = Keys()  # the plan's public link keys (empty: packaged --insecure); sdk/keys.py

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.plan.steps_of(self.device)

    def file(self, name: str) -> Path:
        return self.path / name

    def device_keypair(self) -> KeyPair:
        """This device's own link keypair (`device.key`, 0600), checked against the manifest."""
        kp = read_keypair(self.path / DEVICE_KEY)
        if self.keys.devices.get(self.device) != kp.public:
            raise BundleError(f"{self.path / DEVICE_KEY} is not {self.device}'s key in this plan (another "
                              f"packaging's?). Copy the whole bundle folder again.")
        return kp


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_for(plan: Plan, device: str, keys: Keys = Keys()) -> dict[str, Any]:
    """The manifest of `device`'s bundle in `plan`, with the plan's public link keys."""
    files: dict[str, str] = {}
    for step in plan.steps_of(device):
        files.update(step.files())
    return {
        "format": FORMAT,
        "schema_version": plan.written_version,
        "device": device,
        "plan_id": plan.plan_id,
        "files": files,
        "keys": keys.to_dict(),
        "plan": plan.to_dict(),
    }


def write_manifest(bundle_dir: Path, plan: Plan, device: str, keys: Keys = Keys()) -> Path:
    """Write `device`'s manifest into `bundle_dir` (its step files must already be there)."""
    path = Path(bundle_dir) / MANIFEST
    path.write_text(json.dumps(manifest_for(plan, device, keys), indent=1, sort_keys=True) + "\n")
    return path


def is_bundle(path: Path | str) -> bool:
    return (Path(path) / MANIFEST).is_file()


def fallback_dirs(device_dir: Path | str) -> dict[str, Path]:
    """The fallback plans' bundles in a device's folder: {the device each plan does without: its bundle
    folder} (docs/bundle-format.md, "Fallback plans"); {} for a folder without any (an older packaging)."""
    root = Path(device_dir) / FALLBACKS
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_bundle(p)}


def is_device_folder(path: Path | str) -> bool:
    """A device's folder in a dist/: its bundle of the primary plan, fallback bundles, or both (a
    standby device's folder holds fallback bundles only)."""
    return is_bundle(path) or bool(fallback_dirs(path))


def load_fallbacks(dist: Path | str, *, verify_files: bool = True, trusted: Iterable[str] = (),
                   complete: bool = True) -> dict[str, dict[str, Bundle]]:
    """Every fallback plan under a `dist/` folder: {the device it does without: {device: its bundle}},
    each checked as `load_dist` checks the primary plan (one plan id, one set of keys, every device
    of it there, the device it does without not among them). {} where none was packaged.
    `complete=False` (a session, which needs only the plans) does not ask for every device's bundle."""
    dist = Path(dist)
    groups: dict[str, dict[str, Bundle]] = {}
    if not dist.is_dir():
        return groups
    for ddir in sorted(dist.iterdir()):
        if not ddir.is_dir():
            continue
        for without, path in fallback_dirs(ddir).items():
            b = load_bundle(path, verify_files=verify_files, trusted=trusted)
            if b.device != ddir.name:
                raise BundleError(f"{path} is {b.device}'s bundle, in {ddir.name}'s folder. Copy the folders "
                                  f"again from the workstation's dist/.")
            groups.setdefault(without, {})[b.device] = b
    for without, bundles in groups.items():
        where = f"the fallback plans in {dist}/*/{FALLBACKS}/{without}"
        plans = {b.plan_id for b in bundles.values()}
        if len(plans) > 1:
            raise BundleError(f"{where} come from different packagings ({', '.join(sorted(plans))}). Package again "
                              f"into an empty folder and copy every device's folder.")
        plan = next(iter(bundles.values())).plan
        if without in plan.device_names():
            raise BundleError(f"{where}: the plan names {without}, the device it should do without. Package again.")
        if any(b.keys != next(iter(bundles.values())).keys for b in bundles.values()):
            raise BundleError(f"{where} hold different link keys. Copy them all again from one dist/.")
        missing = set(plan.device_names()) - set(bundles)
        if missing and complete:
            raise BundleError(f"{where} lack the bundles of {', '.join(sorted(missing))}. Copy every device's folder "
                              f"(the standby devices' too) from the workstation's dist/.")
    return groups


def load_bundle(path: Path | str, *, verify_files: bool = True, trusted: Iterable[str] = ()) -> Bundle:
    """Load one device's bundle folder, checking schema, signature and signer (`trusted`: signers'
    public keys to trust besides this machine's store; docs/bundle-format.md, "Signature"), plan id
    and every file's sha256."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        hint = ""
        if fallback_dirs(path):
            hint = (f" It holds only fallback bundles ({', '.join(fallback_dirs(path))}): a standby device's "
                    f"folder, which `edgepart run` serves (docs/failover.md).")
        elif path.is_dir() and any(is_bundle(p) for p in path.iterdir() if p.is_dir()):
            hint = f" It holds bundle folders ({', '.join(sorted(p.name for p in path.iterdir() if is_bundle(p)))}); name one of them."
        raise BundleError(
            f"{path} is not an edgepart bundle: it has no {MANIFEST}.{hint} "
            f"Bundles are written by `edgepart package MODEL --cluster CLUSTER -o DIST`."
        )
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}). Copy the bundle again from the workstation.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not an edgepart manifest (no \"format\": \"{FORMAT}\").")
    version = m.get("schema_version")
    if type(version) is not int or version not in READS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise BundleError(
            f"The bundle {path} has schema version {version!r}, but this edgepart reads versions "
            f"{', '.join(map(str, READS))}. "
            + (
                "It was written by a newer edgepart: upgrade edgepart on this device."
                if newer
                else "It was written by an older edgepart: package the model again with this one."
            )
        )
    verify_manifest(m, mpath, trusted)
    plan = Plan.from_dict(m.get("plan", {}))
    device = m.get("device")
    if device not in plan.device_names():
        raise BundleError(f"{mpath} is for device {device!r}, which its plan does not name. Package again.")
    if plan.plan_id != m.get("plan_id"):
        raise BundleError(
            f"{mpath}: the plan does not hash to the recorded plan id ({m.get('plan_id')!r} recorded, "
            f"{plan.plan_id!r} computed): the manifest was edited. Copy the bundle again, or package again."
        )
    expected: dict[str, str] = {}
    for step in plan.steps_of(device):
        expected.update(step.files())
    if verify_files:
        for name, digest in sorted(expected.items()):
            f = path / name
            if not f.is_file():
                raise BundleError(f"The bundle {path} is missing {name}. Copy the whole bundle folder again.")
            actual = sha256_file(f)
            if actual != digest:
                raise BundleError(
                    f"{f} was modified: its sha256 is {actual[:12]}…, the manifest expects {digest[:12]}…. "
                    f"Copy the bundle again from the workstation, or package the model again."
                )
    keys = Keys.from_dict(m.get("keys"), mpath)
    if keys.secure and set(keys.devices) != set(plan.device_names()):
        raise BundleError(f"{mpath}: its keys name other devices than its plan. Copy the bundle again, or package again.")
    return Bundle(path=path, device=device, plan=plan, keys=keys)


def load_dist(dist: Path | str, *, verify_files: bool = True, trusted: Iterable[str] = ()) -> dict[str, Bundle]:
    """Load every bundle under a `dist/` folder and check they all belong to one plan."""
    dist = Path(dist)
    if is_bundle(dist):
        raise BundleError(f"{dist} is one device's bundle; this needs the folder that holds all of them (its parent).")
    if not dist.is_dir():
        raise BundleError(f"{dist} does not exist. Write it with `edgepart package MODEL --cluster CLUSTER -o {dist}`.")
    bundles = {b.device: b for b in (load_bundle(p, verify_files=verify_files, trusted=trusted)
                                     for p in sorted(dist.iterdir()) if is_bundle(p))}
    if not bundles:
        raise BundleError(f"{dist} holds no bundles (no sub-folder with a {MANIFEST}).")
    ids = {b.plan_id for b in bundles.values()}
    if len(ids) > 1:
        by_id = ", ".join(f"{d}: {b.plan_id}" for d, b in sorted(bundles.items()))
        raise BundleError(f"The bundles in {dist} come from different plans ({by_id}). Package again into an empty folder.")
    plan = next(iter(bundles.values())).plan
    if any(b.keys != next(iter(bundles.values())).keys for b in bundles.values()):
        raise BundleError(f"The bundles in {dist} hold different link keys (some were copied from another packaging "
                          f"of the same plan, or a client was added to some only). Copy them all again from one dist/.")
    missing = set(plan.device_names()) - set(bundles)
    if missing:
        raise BundleError(f"{dist} lacks the bundles of {', '.join(sorted(missing))} from its plan.")
    return bundles
