"""Signed bundles: the workstation signs each device's manifest (Ed25519), and a device loads only
bundles whose signature verifies and whose signer it trusts (docs/bundle-format.md, "Signature").

    config_dir()/signing.key        the workstation's signing key: a comment and the 32-byte seed
                                    in hex; mode 600, refused when group or others may read it
    config_dir()/trusted-signers    this machine's trust store: `<public key hex> <name>` per line,
                                    `#` comments; an empty store trusts the first signer it sees

The signature covers `canonical(manifest)`: the manifest without its "signature" entry, as compact
JSON with sorted keys, so the plan, the plan id and the file hashes are all signed. Public keys are
shown as fingerprints (their first 16 hex digits) in messages; the seed is never printed.

Device-side safe: imports the standard library, PyNaCl and edgepart.errors only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import BundleError

try:
    import fcntl
except ImportError:  # (Windows: no advisory locks; the trust store is then written without one)
    fcntl = None

SCHEME = "ed25519"
KEY_FILE = "signing.key"
TRUST_FILE = "trusted-signers"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIX = ("the manifest was modified after signing or is damaged: "
        "copy the bundle again from the workstation, or package again.")

_STORE_HEADER = ("# edgepart: the bundle signers this machine trusts, `<public key hex> <name>` per line "
                 "(docs/bundle-format.md, \"Signature\")\n")

log = logging.getLogger("edgepart")


def config_dir() -> Path:
    """$EDGEPART_CONFIG_DIR, else $XDG_CONFIG_HOME/edgepart, else ~/.config/edgepart."""
    if os.environ.get("EDGEPART_CONFIG_DIR"):
        return Path(os.environ["EDGEPART_CONFIG_DIR"])
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "edgepart"


def signing_key_path() -> Path:
    """Where the workstation's signing key lives by default."""
    return config_dir() / KEY_FILE


def trust_store_path() -> Path:
    """Where this machine's trusted signers are listed."""
    return config_dir() / TRUST_FILE


def public_hex(key: SigningKey | VerifyKey) -> str:
    """The public key of `key` (a signing key or a verify key) as 64 hex digits."""
    return bytes(getattr(key, "verify_key", key)).hex()


def fingerprint(public_hex: str) -> str:
    """How messages name a public key: its first 16 hex digits."""
    return public_hex[:16]


def _check_hex(hex_key: str, what: str) -> str:
    """`hex_key` in lower case, or BundleError when it is not 64 hex digits."""
    h = str(hex_key).strip().lower()
    if not _HEX64.fullmatch(h):
        raise BundleError(f"{what} {hex_key!r} is not a public signing key: one is 64 hex digits, as "
                          f"`edgepart keys signer` prints it on the workstation.")
    return h


def _private(path: Path, mask: int) -> None:
    """BundleError when `path` has any of the permission bits `mask` (POSIX modes only)."""
    if os.name == "posix" and path.stat().st_mode & mask:
        who = "read or written" if mask & 0o044 else "written"
        raise BundleError(f"{path} may be {who} by other users, so edgepart will not use it. "
                          f"Run `chmod 600 {path}`.")


def _read_key(path: Path) -> SigningKey:
    """The signing key in `path`: a hex seed line, `#` comments (docs/bundle-format.md, "Signature")."""
    try:
        _private(path, 0o077)
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        seed = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(seed) != 1 or not _HEX64.fullmatch(seed[0].lower()):
            raise ValueError("no line of 64 hex digits")
        return SigningKey(bytes.fromhex(seed[0]))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise BundleError(f"The signing key {path} is malformed ({why}). Restore it from a backup, or move it "
                          f"away to make a new one (then every device must trust the new key).") from None


def _create_key(path: Path) -> SigningKey | None:
    """A new key written to `path` with mode 600 (its folder 700), or None if `path` appeared meanwhile."""
    key = SigningKey.generate()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(f"# edgepart bundle signing key (Ed25519 seed, hex): keep it secret; public key "
                f"{public_hex(key)}\n{bytes(key).hex()}\n")
    return key


def load_or_create_signing_key(path: Path | None = None) -> SigningKey:
    """The signing key in `path` (default: config_dir()/signing.key), made on first use. A new
    default key is added to this machine's trust store, so its own sessions load its bundles."""
    target = Path(path) if path is not None else signing_key_path()
    if not target.exists():
        key = _create_key(target)
        if key is not None:
            if path is None or target == signing_key_path():
                trust(public_hex(key), "this workstation's own signing key")
            return key
    return _read_key(target)


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without "signature", compact, sorted, ASCII."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def sign_manifest(manifest: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """A copy of `manifest` with a "signature" entry: scheme, signer (public hex), sig (hex)."""
    signed = {k: v for k, v in manifest.items() if k != "signature"}
    sig = key.sign(canonical(signed)).signature.hex()
    signed["signature"] = {"scheme": SCHEME, "signer": public_hex(key), "sig": sig}
    return signed


def _signer_of(manifest: dict[str, Any], where: Path) -> str:
    """The signer's public hex once the signature verifies, else BundleError naming `where`."""
    s = manifest.get("signature")
    if not isinstance(s, dict):
        raise BundleError(f"{where} is not signed (no \"signature\"): {_FIX}")
    if s.get("scheme") != SCHEME:
        raise BundleError(f"{where} is signed with scheme {s.get('scheme')!r}, not {SCHEME!r}: {_FIX}")
    signer, sig = s.get("signer"), s.get("sig")
    try:
        if not (isinstance(signer, str) and _HEX64.fullmatch(signer) and isinstance(sig, str)):
            raise ValueError("malformed signer or sig")
        VerifyKey(bytes.fromhex(signer)).verify(canonical(manifest), bytes.fromhex(sig))
    except (ValueError, TypeError, CryptoError):
        raise BundleError(f"{where}: its signature does not verify, so {_FIX}") from None
    return signer


def verify_manifest(manifest: dict[str, Any], where: Path, trusted: Iterable[str] = (), pin: bool = True) -> str:
    """The signer's public hex when `manifest`'s signature verifies and its signer is trusted
    (`trusted` or the trust store), else BundleError. With an empty store, no `trusted` and `pin`,
    the first signer seen is added to the store, with a warning (trust on first use, like SSH)."""
    signer = _signer_of(manifest, where)
    store = trusted_signers()
    keys = {_check_hex(t, "The trusted key") for t in trusted} | set(store)
    if signer in keys:
        return signer
    if not keys and pin and _trust_first(signer, f"first seen in {where}"):
        log.warning("trusting bundle signer %s on first use (it signed %s), as SSH does a new host; "
                    "%s now lists it and bundles signed by other keys will be refused. Check the "
                    "fingerprint against `edgepart keys signer` on the workstation.",
                    fingerprint(signer), where, trust_store_path())
        return signer
    keys |= set(trusted_signers())  # (another process may have trusted a first signer meanwhile)
    if signer in keys:
        return signer
    fps = ", ".join(sorted(fingerprint(k) for k in keys)) or "no key"
    raise BundleError(
        f"{where} is signed by key {fingerprint(signer)}, which this device does not trust (it trusts "
        f"{fps}). If you packaged it, run `edgepart keys trust {signer}` on this device, or copy the "
        f"bundles signed by the workstation this device trusts.")


def trusted_signers() -> dict[str, str]:
    """This machine's trust store (public hex -> name); {} when it does not exist yet."""
    path = trust_store_path()
    if not path.exists():
        return {}
    try:
        _private(path, 0o022)
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise BundleError(f"The trust store {path} cannot be read ({why}). Fix or remove it.") from None
    found: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            hex_key, *name = line.split(None, 1)
            found[_check_hex(hex_key, f"{path}, line {n}:")] = " ".join(name).strip()
    return found


def trust(hex_key: str, name: str = "") -> bool:
    """Add a signer to this machine's trust store; False when it was there already."""
    h = _check_hex(hex_key, "The key")
    with _store_lock():
        return _add(h, name)


def _trust_first(hex_key: str, name: str) -> bool:
    """Trust `hex_key` if the store is still empty (two agents starting at once on a new device must
    not both trust a first signer of their own); False when another process filled it first."""
    with _store_lock():
        return not trusted_signers() and _add(hex_key, name)


def _add(h: str, name: str) -> bool:
    if h in trusted_signers():
        return False
    path = trust_store_path()
    old = path.read_text() if path.exists() else _STORE_HEADER
    if old and not old.endswith("\n"):
        old += "\n"
    _write_atomic(path, old + f"{h} {' '.join(name.split())}".rstrip() + "\n")
    return True


@contextlib.contextmanager
def _store_lock():
    """The trust store's read-check-write, one process at a time (an advisory lock beside it)."""
    path = trust_store_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` in one step (a mode-600 temporary file in its folder, then os.replace)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
