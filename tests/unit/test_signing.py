"""Signed bundles (edgepart.signing, `edgepart keys`): real Ed25519 keys and real files under a
temporary config folder. A manifest verifies exactly when nothing in it changed since signing and
its signer is trusted; trust on first use pins the first signer; the signing key stays private."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

import edgepart.cli_keys  # noqa: F401  (registers `edgepart keys` on the app)
from edgepart.bundle import MANIFEST, manifest_for
from edgepart.cli import app
from edgepart.errors import BundleError
from edgepart.plan import CALLER, DeviceSpec, Plan, Route, Step, TensorSpec
from edgepart.signing import (
    canonical,
    config_dir,
    fingerprint,
    load_or_create_signing_key,
    public_hex,
    sign_manifest,
    trust,
    trust_store_path,
    trusted_signers,
    verify_manifest,
)

pytestmark = pytest.mark.timeout(60)

DAMAGED = "the manifest was modified after signing or is damaged"


@pytest.fixture(autouse=True)
def cfg(tmp_path, monkeypatch) -> Path:
    """A config folder of this test's own (not made yet: the code under test makes it)."""
    d = tmp_path / "cfg"
    monkeypatch.setenv("EDGEPART_CONFIG_DIR", str(d))
    return d


def manifest() -> dict:
    """pi's manifest of a two-device plan, as the packager writes it (through a JSON file and back)."""
    x, h, y = TensorSpec("x", "float32", ("N", 3, 8, 8)), TensorSpec("h", "float32", ("N", 6)), TensorSpec("y", "float32", ("N", 10))
    plan = Plan(
        strategy="pipeline", model_name="net", model_sha256="ab" * 32, inputs=(x,), outputs=(y,),
        devices=(DeviceSpec("jetson", ("CUDAExecutionProvider",)), DeviceSpec("pi")),
        steps=(Step("stage0", "jetson", "stage0.onnx", "11" * 32, (x,), (h,), nodes=4, estimated_ms=1.25),
               Step("stage1", "pi", "stage1.onnx", "22" * 32, (h,), (y,), data_files=(("stage1.onnx.data", "33" * 32),),
                    nodes=5, estimated_ms=7.5)),
        routes=(Route("x", CALLER, "jetson"), Route("h", "jetson", "pi"), Route("y", "pi", CALLER)),
        objective="throughput", estimates=(("latency_ms", 9.0), ("period_ms", 7.5)),
    )
    return json.loads(json.dumps(manifest_for(plan, "pi")))


def written(tmp_path: Path, m: dict) -> tuple[Path, dict]:
    """`m` written as a bundle's manifest.json (as the packager writes it) and read back."""
    path = tmp_path / "pi" / MANIFEST
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    return path, json.loads(path.read_text())


def changes(node, path=()):
    """Every one-place change of `node`: each string with one character flipped, each number
    changed, each key renamed; yields (where, a changed deep copy's editor)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (f"key {k}",), ("rename", path, k)
            yield from changes(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from changes(v, path + (i,))
    elif isinstance(node, (str, int, float)) and not isinstance(node, bool):
        yield path, ("value", path, None)


def changed(m: dict, edit) -> dict:
    kind, path, key = edit
    out = copy.deepcopy(m)
    parent = out
    for p in path[:-1] if kind == "value" else path:
        parent = parent[p]
    if kind == "rename":
        parent[key[:-1] + chr(ord(key[-1]) ^ 1)] = parent.pop(key)
        return out
    v = parent[path[-1]]
    if isinstance(v, str):
        v = (v[:-1] + chr(ord(v[-1]) ^ 1)) if v else "x"
    else:
        v = v + 1
    parent[path[-1]] = v
    return out


def seeds(*keys: SigningKey) -> list[str]:
    """The secrets of `keys` as hex, which no message may hold."""
    return [bytes(k).hex() for k in keys]


# ---- sign and verify -------------------------------------------------------------------------


def test_a_signed_manifest_verifies_after_a_round_trip_through_its_file(tmp_path):
    key = load_or_create_signing_key()
    path, m = written(tmp_path, sign_manifest(manifest(), key))
    assert m["signature"]["scheme"] == "ed25519" and m["signature"]["signer"] == public_hex(key)
    assert len(m["signature"]["sig"]) == 128
    assert verify_manifest(m, path) == public_hex(key)
    assert verify_manifest(m, path, trusted=[public_hex(key)], pin=False) == public_hex(key)


def test_canonical_leaves_out_the_signature_and_the_key_order():
    m = manifest()
    signed = sign_manifest(m, SigningKey.generate())
    assert "signature" not in m  # sign_manifest returns a copy
    assert canonical(signed) == canonical(m) == canonical(dict(reversed(list(m.items()))))
    assert canonical(m) == json.dumps(m, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("part", ["plan", "files", "plan_id", "device", "schema_version", "format"])
def test_any_one_change_is_refused_naming_the_file(tmp_path, part):
    """Every string of the plan or the files map with one character flipped, every number changed,
    every key renamed (and each top-level field changed): each is refused."""
    key = load_or_create_signing_key()
    path, m = written(tmp_path, sign_manifest(manifest(), key))
    assert verify_manifest(m, path) == public_hex(key)
    edits = list(changes(m[part], (part,)))
    assert len(edits) >= {"plan": 100, "files": 4}.get(part, 1)
    for where, edit in edits:
        bad = changed(m, edit)
        assert bad != m, where
        with pytest.raises(BundleError) as e:
            verify_manifest(bad, path)
        assert str(path) in str(e.value) and DAMAGED in str(e.value), where


def test_an_added_entry_is_refused(tmp_path):
    path, m = written(tmp_path, sign_manifest(manifest(), load_or_create_signing_key()))
    for bad in ({**m, "keys": {"link": "x"}}, {**m, "extra": 1}, {**m, "files": {**m["files"], "x.onnx": "00" * 32}}):
        with pytest.raises(BundleError, match=DAMAGED):
            verify_manifest(bad, path)


def test_a_byte_changed_in_the_file_is_refused(tmp_path):
    key = load_or_create_signing_key()
    path, m = written(tmp_path, sign_manifest(manifest(), key))
    text = path.read_text()
    digest = "22" * 32
    assert text.count(digest) == 2  # in the files map and in the plan's step
    for at in (text.index(digest), text.rindex(digest)):
        bad = json.loads(text[:at] + "3" + text[at + 1:])
        with pytest.raises(BundleError, match=DAMAGED) as e:
            verify_manifest(bad, path)
        assert str(path) in str(e.value)


def test_a_missing_or_malformed_signature_is_refused(tmp_path):
    key = load_or_create_signing_key()
    path, m = written(tmp_path, sign_manifest(manifest(), key))
    sig = m["signature"]
    bad_sigs = {
        "removed": None,
        "not an object": "deadbeef",
        "other scheme": {**sig, "scheme": "rsa"},
        "sig not hex": {**sig, "sig": "zz" * 64},
        "sig short": {**sig, "sig": sig["sig"][:-2]},
        "sig of another manifest": {**sig, "sig": sign_manifest({"x": 1}, key)["signature"]["sig"]},
        "signer not hex": {**sig, "signer": "nope"},
        "signer another key": {**sig, "signer": public_hex(SigningKey.generate())},
        "no sig": {"scheme": "ed25519", "signer": sig["signer"]},
    }
    for why, s in bad_sigs.items():
        bad = {k: v for k, v in m.items() if k != "signature"}
        if s is not None:
            bad["signature"] = s
        with pytest.raises(BundleError) as e:
            verify_manifest(bad, path, trusted=[public_hex(key)])
        assert str(path) in str(e.value) and DAMAGED in str(e.value), why
        assert "package again" in str(e.value), why


# ---- who is trusted --------------------------------------------------------------------------


def test_a_signer_the_store_does_not_trust_is_refused_naming_both_fingerprints(tmp_path):
    a, b = SigningKey.generate(), SigningKey.generate()
    assert trust(public_hex(a), "workstation A")
    path, m = written(tmp_path, sign_manifest(manifest(), b))
    with pytest.raises(BundleError) as e:
        verify_manifest(m, path)
    msg = str(e.value)
    assert str(path) in msg
    assert f"signed by key {fingerprint(public_hex(b))}" in msg and f"it trusts {fingerprint(public_hex(a))}" in msg
    assert f"edgepart keys trust {public_hex(b)}" in msg
    assert public_hex(a) not in msg  # the trusted key only as a fingerprint
    assert not any(s in msg for s in seeds(a, b))
    assert set(trusted_signers()) == {public_hex(a)}  # nothing pinned


def test_trust_on_first_use_pins_the_first_signer_and_refuses_the_next(tmp_path, caplog):
    a, b = SigningKey.generate(), SigningKey.generate()
    path_a, ma = written(tmp_path, sign_manifest(manifest(), a))
    assert not trust_store_path().exists()
    with caplog.at_level(logging.WARNING, logger="edgepart"):
        assert verify_manifest(ma, path_a) == public_hex(a)
        assert verify_manifest(ma, path_a) == public_hex(a)
    pinned = [r for r in caplog.records if r.name == "edgepart" and r.levelno == logging.WARNING]
    assert len(pinned) == 1 and fingerprint(public_hex(a)) in pinned[0].getMessage()
    assert not any(s in pinned[0].getMessage() for s in seeds(a))
    assert list(trusted_signers()) == [public_hex(a)]
    assert stat.S_IMODE(trust_store_path().stat().st_mode) == 0o600
    _, mb = written(tmp_path, sign_manifest(manifest(), b))
    with pytest.raises(BundleError, match=f"signed by key {fingerprint(public_hex(b))}, which this device does not trust"):
        verify_manifest(mb, path_a)


def test_without_pinning_an_empty_store_trusts_nobody(tmp_path):
    path, m = written(tmp_path, sign_manifest(manifest(), SigningKey.generate()))
    with pytest.raises(BundleError, match=r"it trusts no key"):
        verify_manifest(m, path, pin=False)
    assert trusted_signers() == {}


def test_trusted_keys_given_override_the_store_and_are_not_pinned(tmp_path):
    a, b = SigningKey.generate(), SigningKey.generate()
    trust(public_hex(a), "A")
    path, m = written(tmp_path, sign_manifest(manifest(), b))
    assert verify_manifest(m, path, trusted=[public_hex(b).upper()]) == public_hex(b)
    assert set(trusted_signers()) == {public_hex(a)}
    # a --trust key is enough where the store is empty too, and then nothing is pinned
    trust_store_path().unlink()
    with pytest.raises(BundleError, match=f"it trusts {fingerprint(public_hex(a))}"):
        verify_manifest(m, path, trusted=[public_hex(a)])
    assert trusted_signers() == {}
    with pytest.raises(BundleError, match="not a public signing key"):
        verify_manifest(m, path, trusted=["abc"])


def test_the_trust_store_adds_once_keeps_comments_and_checks_keys(cfg):
    k = public_hex(SigningKey.generate())
    assert trusted_signers() == {}
    assert trust(k, "lab\nworkstation") is True
    assert trust(k.upper(), "again") is False
    assert trusted_signers() == {k: "lab workstation"}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o700
    path = trust_store_path()
    path.write_text(path.read_text() + "# a note\n\n" + "cd" * 32)  # no final newline
    assert trust("ef" * 32) is True
    assert trusted_signers() == {k: "lab workstation", "cd" * 32: "", "ef" * 32: ""}
    assert "# a note" in path.read_text()
    path.write_text(path.read_text() + "\t" + "01" * 32 + "\tpi  a\n")
    assert trusted_signers()["01" * 32] == "pi  a"
    assert not [p for p in cfg.iterdir() if p.name.startswith(".")]  # no temporary file left
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(BundleError, match="not a public signing key"):
            trust(bad)
    path.write_text(path.read_text() + "not-a-key pi\n")
    with pytest.raises(BundleError, match=re.escape(f"{path}, line 8: 'not-a-key'")):
        trusted_signers()


# ---- the signing key -------------------------------------------------------------------------


def test_the_signing_key_is_made_private_once_and_its_public_key_trusted(cfg):
    key = load_or_create_signing_key()
    path = cfg / "signing.key"
    assert config_dir() == cfg
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(cfg.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and lines[1] == bytes(key).hex() and len(lines) == 2
    assert public_hex(load_or_create_signing_key()) == public_hex(key)
    assert public_hex(load_or_create_signing_key(path)) == public_hex(key)
    assert trusted_signers() == {public_hex(key): "this workstation's own signing key"}
    assert len(public_hex(key)) == 64 and fingerprint(public_hex(key)) == public_hex(key)[:16]


def test_a_signing_key_others_may_read_is_refused(cfg):
    load_or_create_signing_key()
    path = cfg / "signing.key"
    path.chmod(0o644)
    with pytest.raises(BundleError, match=re.escape(f"chmod 600 {path}")):
        load_or_create_signing_key()
    path.chmod(0o600)
    load_or_create_signing_key()


def test_a_malformed_signing_key_is_named(tmp_path):
    path = tmp_path / "k" / "other.key"
    key = load_or_create_signing_key(path)
    assert trusted_signers() == {}  # only the default key is trusted when made
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for text in ("", "# only a comment\n", "abc\n", bytes(key).hex() + "\n" + bytes(key).hex() + "\n"):
        path.write_text(text)
        with pytest.raises(BundleError, match=re.escape(f"signing key {path} is malformed")):
            load_or_create_signing_key(path)


def test_config_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEPART_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "edgepart"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "edgepart"


# ---- edgepart keys ---------------------------------------------------------------------------


def test_keys_signer_prints_the_public_key_and_makes_it_once(cfg):
    runner = CliRunner()
    r = runner.invoke(app, ["keys", "signer"])
    assert r.exit_code == 0, r.output
    assert "made a new signing key" in r.stderr
    key = load_or_create_signing_key()
    pub = public_hex(key)
    assert r.stdout.splitlines() == [pub, f"fingerprint {fingerprint(pub)}"]
    assert bytes(key).hex() not in r.output
    r = runner.invoke(app, ["keys", "signer"])
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == pub and "made a new" not in r.stderr
    other = cfg.parent / "other.key"
    r = runner.invoke(app, ["keys", "signer", "--signing-key", str(other)])
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == public_hex(load_or_create_signing_key(other))
    other.chmod(0o640)
    r = runner.invoke(app, ["keys", "signer", "--signing-key", str(other)])
    assert r.exit_code == 2 and f"chmod 600 {other}" in " ".join(r.stderr.split())


def test_keys_trust_and_trusted(cfg):
    runner = CliRunner()
    r = runner.invoke(app, ["keys", "trusted"])
    assert r.exit_code == 0 and "trusts no signer yet" in r.output
    k = public_hex(SigningKey.generate())
    r = runner.invoke(app, ["keys", "trust", k, "--name", "bench [pc]"])
    assert r.exit_code == 0, r.output
    assert f"now trusts signer {fingerprint(k)} (bench [pc])" in r.stdout
    assert trusted_signers() == {k: "bench [pc]"}
    r = runner.invoke(app, ["keys", "trust", k])
    assert r.exit_code == 0 and "already trusted" in r.stdout
    r = runner.invoke(app, ["keys", "trust", "12345"])
    assert r.exit_code == 2 and "not a public signing key" in r.stderr
    own = public_hex(load_or_create_signing_key())
    r = runner.invoke(app, ["keys", "trusted"])
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.stdout.splitlines() if k in ln or own in ln]
    assert len(rows) == 2
    assert fingerprint(k) in rows[0] and "bench [pc]" in rows[0] and k in rows[0]
    assert fingerprint(own) in rows[1] and "own signing key" in rows[1] and own in rows[1]


def test_keys_from_a_real_process(cfg):
    """`edgepart keys` in a process of its own, as a device runs it."""
    cmd = [sys.executable, "-c", "import edgepart.cli_keys, edgepart.cli as c; c.main()", "keys"]
    env = {**os.environ, "EDGEPART_CONFIG_DIR": str(cfg)}
    out = subprocess.run([*cmd, "signer"], env=env, capture_output=True, text=True, timeout=30, check=True)
    pub = out.stdout.split()[0]
    assert pub == public_hex(load_or_create_signing_key())
    out = subprocess.run([*cmd, "trusted"], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert pub in out.stdout


_RACER = """
import json, sys
from pathlib import Path
from edgepart.errors import BundleError
from edgepart.signing import verify_manifest
m = json.loads(Path(sys.argv[1]).read_text())
sys.stdin.readline()  # all start together
try:
    print("trusted" if verify_manifest(m, Path(sys.argv[1])) else "?")
except BundleError:
    print("refused")
"""


def test_processes_racing_on_a_new_device_trust_one_first_signer(tmp_path, cfg):
    """Agents of several bundles starting at once on a fresh device, each signed by another key:
    one signer is trusted on first use, every other is refused (the store's read-check-write is
    one process at a time)."""
    n = 6
    paths = []
    for i in range(n):
        d = tmp_path / f"b{i}"
        d.mkdir()
        paths.append(d / MANIFEST)
        paths[-1].write_text(json.dumps(sign_manifest(manifest(), SigningKey.generate())))
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(p)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for p in paths]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        said = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert sorted(said) == ["refused"] * (n - 1) + ["trusted"], said
    assert len(trusted_signers()) == 1
