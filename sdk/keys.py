"""Link keys: who may talk to whom, as CurveZMQ keys (docs/bundle-format.md, "Keys").

`edgepart package` makes a CURVE keypair per device and one per client (the app, `app.key`):

    dist/<device>/device.key   this device's keypair, mode 0600, in its own bundle only
    dist/app.key               the app's keypair, mode 0600, beside the bundles
    manifest.json "keys"       every device's and every client's *public* key, in every bundle

An agent serves only connections made with one of its plan's keys and connects to a peer only with
that peer's public key pinned, so an announcement over mDNS is a hint, never trust. A secret key never
appears in a log line or a repr. Bundles packaged with `--insecure` carry no keys; their links are
plaintext and both sides must say `--insecure` (docs/agents.md, "Encryption").
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import zmq
from zmq.utils import z85

from .errors import BundleError

DEVICE_KEY = "device.key"  # in each device's bundle folder
CLIENT_KEY_SUFFIX = ".key"  # dist/<client>.key
DEFAULT_CLIENT = "app"
KEYS_VERSION = 1


@dataclass(frozen=True)
class KeyPair:
    """A CURVE keypair (Z85 text, 40 characters each). The secret never shows in a repr."""

    name: str
    public: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if zmq.curve_public(self.secret.encode()).decode() != self.public:
            raise BundleError(f"the key of {self.name!r} is damaged: its public half does not belong to its secret half.")


@dataclass(frozen=True)
class Keys:
    """The public keys a plan's bundles carry: `devices` by device name, `clients` by client name."""

    devices: Mapping[str, str] = field(default_factory=dict)
    clients: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))
        object.__setattr__(self, "clients", MappingProxyType(dict(self.clients)))

    @property
    def secure(self) -> bool:
        """False for a bundle packaged with --insecure (no keys at all)."""
        return bool(self.devices)

    def allowed(self) -> frozenset[str]:
        """The public keys an agent of this plan accepts connections from: its peers and the clients."""
        return frozenset(self.devices.values()) | frozenset(self.clients.values())

    def to_dict(self) -> dict[str, Any]:
        if not self.secure:
            return {}
        return {"version": KEYS_VERSION, "devices": dict(sorted(self.devices.items())),
                "clients": dict(sorted(self.clients.items()))}

    @classmethod
    def from_dict(cls, d: Any, where: Path | str) -> "Keys":
        if d in (None, {}):
            return cls()
        ok = (isinstance(d, dict) and d.get("version") == KEYS_VERSION
              and all(isinstance(d.get(k), dict) for k in ("devices", "clients"))
              and all(isinstance(n, str) and _is_z85_key(v)
                      for k in ("devices", "clients") for n, v in d[k].items()))
        if not ok:
            raise BundleError(f"{where}: its \"keys\" are not edgepart link keys (version {KEYS_VERSION}, "
                              f"public keys of 40 Z85 characters). Copy the bundle again, or package again.")
        return cls(d["devices"], d["clients"])

    def with_client(self, name: str, public: str) -> "Keys":
        return Keys(self.devices, {**self.clients, name: public})


def _is_z85_key(v: Any) -> bool:
    if not isinstance(v, str) or len(v) != 40:
        return False
    try:
        return len(z85.decode(v.encode())) == 32
    except (ValueError, KeyError, TypeError):
        return False


def new_keypair(name: str) -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(name, public.decode(), secret.decode())


def write_keypair(path: Path, kp: KeyPair) -> Path:
    """Write a keypair readable by its owner only (0600), created that way (never world-readable
    for an instant)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"edgepart-key": KEYS_VERSION, "name": kp.name, "public": kp.public, "secret": kp.secret}, f)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_keypair(path: Path) -> KeyPair:
    """Read a keypair file, refusing one that others may read (as ssh does)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise BundleError(f"{path} does not exist: the key was not copied with the bundle. Copy the whole "
                          f"bundle folder again (keys are made by `edgepart package`).") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BundleError(f"{path} may be read by other users (mode {stat.S_IMODE(mode):o}); it holds a secret "
                          f"key. Run `chmod 600 {path}`.")
    try:
        d = json.loads(path.read_text())
        return KeyPair(str(d["name"]), str(d["public"]), str(d["secret"]))
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zmq.ZMQError):
        raise BundleError(f"{path} is not an edgepart key file. Copy it again from the workstation, "
                          f"or package again.") from None


def client_key_path(dist: Path | str, name: str = DEFAULT_CLIENT) -> Path:
    return Path(dist) / f"{name}{CLIENT_KEY_SUFFIX}"


@dataclass(frozen=True)
class Credentials:
    """What one end of a link needs: its own keypair and the plan's public keys. `None` keys (an
    insecure run) mean plaintext links."""

    me: KeyPair | None
    keys: Keys

    @property
    def secure(self) -> bool:
        return self.me is not None

    def server_key(self, role: str) -> str | None:
        return self.keys.devices.get(role)
