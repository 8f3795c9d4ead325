"""Seal bundles: every device's link keys and every manifest's signature (docs/bundle-format.md, "Keys"
and "Signature").

Every strategy's bundles are sealed where they are written (`bundles.write_bundles`): a CURVE
keypair per device (its secret in its own folder, `device.key`, 0600), the clients' keys (`dist/*.key`:
those already there are kept, so an app's key survives packaging again; `app.key` is made when there
is none), every public key in every manifest, and the manifest signed with the workstation's Ed25519
key (`edgepart.signing`). `--insecure` packaging writes no link keys (the manifests are still signed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from edgepart.bundle import MANIFEST, manifest_for
from edgepart.errors import BundleError
from edgepart.keys import (CLIENT_KEY_SUFFIX, DEFAULT_CLIENT, DEVICE_KEY, KeyPair, Keys, client_key_path, new_keypair,
                           read_keypair, write_keypair)
from edgepart.plan import Plan
from edgepart.signing import load_or_create_signing_key, sign_manifest


@dataclass(frozen=True)
class Sealing:
    """How bundles are sealed: with link keys (the default) or `insecure`, signed by `signing_key`
    (a key file; None: the workstation's own, made on first use)."""

    insecure: bool = False
    signing_key: Path | None = None


def client_keys(dist: Path) -> list[KeyPair]:
    """The clients' keypairs already in `dist/` (`<name>.key`), or a new `app` one."""
    found = [read_keypair(p) for p in sorted(Path(dist).glob(f"*{CLIENT_KEY_SUFFIX}")) if p.is_file()] \
        if Path(dist).is_dir() else []
    return found or [new_keypair(DEFAULT_CLIENT)]


def make_keys(devices: Iterable[str], clients: Iterable[KeyPair]) -> tuple[Keys, dict[str, KeyPair]]:
    """New device keypairs and the public keys of them and of `clients`."""
    mine = {d: new_keypair(d) for d in devices}
    return Keys({d: kp.public for d, kp in mine.items()}, {c.name: c.public for c in clients}), mine


def write_manifest(bundle_dir: Path, plan: Plan, device: str, keys: Keys, sealing: Sealing = Sealing()) -> Path:
    """`device`'s manifest with the plan's public keys, signed."""
    signed = sign_manifest(manifest_for(plan, device, keys), load_or_create_signing_key(sealing.signing_key))
    path = Path(bundle_dir) / MANIFEST
    path.write_text(json.dumps(signed, indent=1, sort_keys=True) + "\n")
    return path


def keys_of(bundle_dir: Path) -> Keys:
    """The link keys in a bundle's manifest as written (to rewrite it for a new plan, or add a client)."""
    path = Path(bundle_dir) / MANIFEST
    try:
        return Keys.from_dict(json.loads(path.read_text()).get("keys"), path)
    except (OSError, ValueError, AttributeError) as e:
        raise BundleError(f"{path} cannot be read ({e}). Package again.") from None


def seal(staging: Path, dist: Path, plan: Plan, sealing: Sealing = Sealing()) -> list[KeyPair]:
    """Write every device's key and signed manifest into `staging/<device>/`; returns the clients'
    keypairs, to write into `dist/` once the bundles are in place (`write_clients`)."""
    clients = [] if sealing.insecure else client_keys(dist)
    keys, mine = (Keys(), {}) if sealing.insecure else make_keys(plan.device_names(), clients)
    for d in plan.device_names():
        (staging / d).mkdir(parents=True, exist_ok=True)
        if d in mine:
            write_keypair(staging / d / DEVICE_KEY, mine[d])
        write_manifest(staging / d, plan, d, keys, sealing)
    return clients


def write_clients(dist: Path, clients: Iterable[KeyPair]) -> None:
    """The clients' key files beside the bundles; under --insecure, stale ones are removed (they
    name keys no bundle holds)."""
    clients = list(clients)
    names = {c.name for c in clients}
    for p in Path(dist).glob(f"*{CLIENT_KEY_SUFFIX}"):
        if p.stem not in names:
            p.unlink()
    for c in clients:
        if not client_key_path(dist, c.name).is_file():
            write_keypair(client_key_path(dist, c.name), c)


def reseal(dirs: Mapping[str, Path], plan: Plan, sealing: Sealing = Sealing()) -> None:
    """Rewrite the manifests of bundles in place for `plan`, keeping their link keys."""
    for d, path in dirs.items():
        write_manifest(path, plan, d, keys_of(path), sealing)


def add_client(dist: Path, name: str, sealing: Sealing = Sealing()) -> tuple[Path, bool]:
    """A new client keypair `dist/<name>.key` whose public key every bundle of `dist` accepts (the
    manifests rewritten and signed again; the models untouched). Returns the key file and whether
    it is new (an existing one is added again, not replaced)."""
    from edgepart.bundle import load_dist, load_fallbacks

    bundles = load_dist(dist, verify_files=False)
    plan = next(iter(bundles.values())).plan
    keys = next(iter(bundles.values())).keys
    if not keys.secure:
        raise BundleError(f"The bundles in {dist} were packaged with --insecure: they take no keys. Package "
                          f"again without --insecure to use client keys.")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise BundleError(f"--name {name!r}: use letters, digits, '-' and '_' (it names the file {name}.key).")
    path = client_key_path(dist, name)
    new = not path.exists()
    kp = new_keypair(name) if new else read_keypair(path)
    if new:
        write_keypair(path, kp)
    keys = keys.with_client(name, kp.public)
    for d, b in bundles.items():
        write_manifest(b.path, plan, d, keys, sealing)
    for group in load_fallbacks(dist, verify_files=False).values():  # the fallback plans take it too (docs/failover.md)
        for d, b in group.items():
            write_manifest(b.path, b.plan, d, b.keys.with_client(name, kp.public), sealing)
    return path, new


def apply(dist: Path, dirs: Mapping[str, Path], plan: Plan, sealing: Sealing) -> None:
    """Seal written bundles as `sealing` says, where it is not the default they were written with:
    --insecure drops every link key; another signing key signs again."""
    if sealing == Sealing():
        return
    for d, path in dirs.items():
        keys = Keys() if sealing.insecure else keys_of(path)
        if sealing.insecure:
            (Path(path) / DEVICE_KEY).unlink(missing_ok=True)
        write_manifest(path, plan, d, keys, sealing)
    if sealing.insecure:
        write_clients(dist, [])
