"""Bundles on disk: what `package` writes, and every way loading refuses a bundle that is not exactly
what was packaged (modified or missing file, edited manifest, other schema, mixed plans)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepart import Bundle, BundleError, load_bundle
from edgepart.bundle import FORMAT, MANIFEST, is_bundle, load_dist, manifest_for
from edgepart.keys import DEVICE_KEY, read_keypair
from edgepart.signing import load_or_create_signing_key, sign_manifest
from edgepart.local import LocalCluster
from edgepart.plan import READS, SCHEMA_VERSION
from edgepart.packager.cluster import cluster_from_dict
from edgepart.packager.cost import CostModel
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.pipeline.compiler import package
from edgepart.packager.strategies.pipeline.planner import evaluate

from graphs import two_in_two_out

pytestmark = pytest.mark.timeout(60)

DEVICES = ("alpha", "beta", "gamma")


def _package(out: Path, gflops=(1.0, 2.0, 3.0), cuts=(3, 7), external_data_min_bytes=None) -> object:
    model = two_in_two_out()
    graph = analyse(model)
    names = DEVICES[: len(cuts) + 1]
    cluster = cluster_from_dict({"devices": [{"name": d, "gflops": g} for d, g in zip(names, gflops)]})
    pp = evaluate(CostModel(graph, cluster), cuts, names)
    kw = {} if external_data_min_bytes is None else {"external_data_min_bytes": external_data_min_bytes}
    return package(model, graph, cluster, pp, out, model_name="two", **kw)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("pristine") / "dist"
    res = _package(out)
    return out, res


@pytest.fixture
def dist(packaged, tmp_path) -> Path:
    """A private copy of the packaged dist/ to break."""
    src, _ = packaged
    dst = tmp_path / "dist"
    shutil.copytree(src, dst)
    return dst


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def _write_manifest(bundle: Path, m: dict) -> None:
    """An edited manifest, signed again by the workstation (so loading reaches the check under test)."""
    m = sign_manifest(m, load_or_create_signing_key())
    (bundle / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True))


# -- what package writes -------------------------------------------------------------------------------

def test_each_bundle_holds_its_manifest_and_its_sub_models_only(packaged):
    out, res = packaged
    assert sorted(p.name for p in out.iterdir()) == sorted([*DEVICES, "app.key"])
    for d in DEVICES:
        b = load_bundle(out / d)
        assert isinstance(b, Bundle)
        assert b.device == d and b.plan == res.plan and b.plan_id == res.plan.plan_id
        files = {f for st in b.steps for f in st.files()}
        assert sorted(p.name for p in (out / d).iterdir()) == sorted(files | {MANIFEST, DEVICE_KEY})
        m = _manifest(out / d)
        assert m["format"] == FORMAT and m["schema_version"] == 1  # all-ONNX plans are written as version 1
        assert m["device"] == d and m["plan_id"] == res.plan.plan_id
        assert m["files"] == {f: h for st in b.steps for f, h in st.files().items()}
        assert set(m["keys"]["devices"]) == set(DEVICES) and set(m["keys"]["clients"]) == {"app"}
        assert m["signature"]["scheme"] == "ed25519"
        unsigned = {k: v for k, v in m.items() if k != "signature"}
        assert unsigned == json.loads(json.dumps(manifest_for(res.plan, d, b.keys)))
        assert b.file(b.steps[0].model_file) == out / d / b.steps[0].model_file


def test_load_dist_gives_every_device(packaged):
    out, res = packaged
    bundles = load_dist(out)
    assert set(bundles) == set(DEVICES)
    assert {b.plan_id for b in bundles.values()} == {res.plan.plan_id}


def test_packaging_is_deterministic(tmp_path):
    a = _package(tmp_path / "a")
    b = _package(tmp_path / "b")
    assert a.plan.plan_id == b.plan.plan_id


# -- a bundle that is not what was packaged ---------------------------------------------------------------

def test_modified_sub_model_is_named(dist):
    f = dist / "beta" / "stage1.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_bundle(dist / "beta")
    msg = str(e.value)
    assert str(f) in msg and "was modified" in msg and "Copy the bundle again" in msg
    with pytest.raises(BundleError, match="stage1.onnx was modified"):
        load_dist(dist)
    load_bundle(dist / "beta", verify_files=False)  # the hash check is what caught it
    load_bundle(dist / "alpha")  # other bundles are untouched


def test_missing_file_is_named(dist):
    (dist / "gamma" / "stage2.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing stage2\.onnx\. Copy the whole bundle folder again"):
        load_bundle(dist / "gamma")


def test_edited_manifest_plan_is_a_plan_id_mismatch(dist):
    m = _manifest(dist / "alpha")
    m["plan"]["steps"][0]["estimated_ms"] += 1.0
    _write_manifest(dist / "alpha", m)
    with pytest.raises(BundleError, match="does not hash to the recorded plan id.*edited"):
        load_bundle(dist / "alpha")


def test_edited_sub_model_hash_in_manifest_is_a_plan_id_mismatch(dist):
    """Editing the file *and* its hash in the plan does not get past the plan id."""
    m = _manifest(dist / "alpha")
    f = dist / "alpha" / "stage0.onnx"
    model = onnx.load(str(f))
    model.doc_string = "tampered"
    onnx.save(model, str(f))
    from edgepart.bundle import sha256_file

    m["plan"]["steps"][0]["sha256"] = sha256_file(f)
    _write_manifest(dist / "alpha", m)
    with pytest.raises(BundleError, match="plan id"):
        load_bundle(dist / "alpha")


def test_edited_plan_id_is_refused(dist):
    m = _manifest(dist / "alpha")
    m["plan_id"] = "0" * 16
    _write_manifest(dist / "alpha", m)
    with pytest.raises(BundleError, match="'0000000000000000' recorded"):
        load_bundle(dist / "alpha")


def test_older_and_newer_schema_say_different_things(dist):
    msgs = {}
    for label, version in (("older", min(READS) - 1), ("newer", SCHEMA_VERSION + 1)):
        m = _manifest(dist / "alpha")
        m["schema_version"] = version
        _write_manifest(dist / "alpha", m)
        with pytest.raises(BundleError) as e:
            load_bundle(dist / "alpha")
        msgs[label] = str(e.value)
        assert f"schema version {version}" in msgs[label]
    assert "package the model again" in msgs["older"] and "upgrade" not in msgs["older"]
    assert "upgrade edgepart" in msgs["newer"] and "package" not in msgs["newer"]


def test_not_a_bundle(dist, tmp_path):
    with pytest.raises(BundleError, match="not an edgepart bundle.*edgepart package"):
        load_bundle(tmp_path)
    # the dist folder itself: the message names the bundles inside it
    with pytest.raises(BundleError, match="alpha, beta, gamma"):
        load_bundle(dist)
    assert is_bundle(dist / "alpha") and not is_bundle(dist)


def test_broken_manifest_json(dist):
    (dist / "alpha" / MANIFEST).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(dist / "alpha")
    (dist / "alpha" / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not an edgepart manifest"):
        load_bundle(dist / "alpha")


def test_manifest_for_a_device_its_plan_does_not_name(dist):
    m = _manifest(dist / "alpha")
    m["device"] = "delta"
    _write_manifest(dist / "alpha", m)
    with pytest.raises(BundleError, match="'delta'.*does not name"):
        load_bundle(dist / "alpha")


# -- a dist folder --------------------------------------------------------------------------------------------

def test_load_dist_rejects_mixed_plans(dist, tmp_path):
    other = tmp_path / "other"
    _package(other, gflops=(1.0, 2.0, 4.0))  # same devices, another plan
    shutil.rmtree(dist / "beta")
    shutil.copytree(other / "beta", dist / "beta")
    load_bundle(dist / "beta")  # each bundle on its own is fine
    with pytest.raises(BundleError, match="come from different plans.*Package again into an empty folder"):
        load_dist(dist)


def test_load_dist_needs_every_device_and_the_right_folder(dist, tmp_path):
    with pytest.raises(BundleError, match="one device's bundle.*parent"):
        load_dist(dist / "alpha")
    with pytest.raises(BundleError, match="does not exist"):
        load_dist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no bundles"):
        load_dist(tmp_path / "empty")
    shutil.rmtree(dist / "gamma")
    with pytest.raises(BundleError, match="lacks the bundles of gamma"):
        load_dist(dist)


def test_package_refuses_a_folder_with_other_things(tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not edgepart bundles.*empty or new folder"):
        _package(out)
    assert (out / "notes.txt").read_text() == "mine"


def test_package_again_replaces_old_bundles(tmp_path):
    out = tmp_path / "dist"
    _package(out)
    app_key = (out / "app.key").read_text()
    res = _package(out, gflops=(1.0, 2.0), cuts=(5,))  # fewer devices now
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "app.key", "beta"]
    assert (out / "app.key").read_text() == app_key  # the app's key survives packaging again
    bundles = load_dist(out)
    assert {b.plan_id for b in bundles.values()} == {res.plan.plan_id}
    assert set(bundles["alpha"].keys.clients.values()) == {read_keypair(out / "app.key").public}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgepart-")]  # staging cleaned up


# -- external data files ---------------------------------------------------------------------------------------

def test_external_data_files_are_hashed_and_checked(tmp_path):
    out = tmp_path / "dist"
    res = _package(out, gflops=(1.0, 2.0), cuts=(5,), external_data_min_bytes=1)
    for st in res.plan.steps:
        assert [f for f, _ in st.data_files] == [st.model_file + ".data"]
        assert (out / st.device / st.data_files[0][0]).stat().st_size >= 16 * 16 * 4  # a whole weight
    feeds = {"a": np.ones((1, 16), np.float32), "b": np.ones((1, 8), np.float32)}
    assert set(LocalCluster.from_dist(out).run(feeds)) == {"y1", "y2"}
    data = out / "beta" / "stage1.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match=r"stage1\.onnx\.data was modified"):
        load_bundle(out / "beta")
    data.unlink()
    with pytest.raises(BundleError, match=r"missing stage1\.onnx\.data"):
        load_bundle(out / "beta")


def test_external_data_with_only_tiny_weights(tmp_path):
    # stage1 is mm_b alone: its one weight (8x16 float32, 512 bytes) stays inside the .onnx file
    res = _package(tmp_path / "dist", gflops=(1.0, 2.0, 3.0), cuts=(2, 3), external_data_min_bytes=1)
    assert load_bundle(tmp_path / "dist" / "beta").steps[0].data_files == ()
    assert res.plan.steps[1].nodes == 1


def test_local_cluster_names_missing_inputs(packaged):
    out, _ = packaged
    with pytest.raises(BundleError, match="Missing model input.*b"):
        LocalCluster.from_dist(out).run({"a": np.ones((1, 16), np.float32)})


def test_manifest_plan_that_is_not_an_object(dist):
    m = _manifest(dist / "alpha")
    m["plan"] = ["not", "a", "plan"]
    _write_manifest(dist / "alpha", m)
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(dist / "alpha")


# -- signatures and link keys (docs/bundle-format.md, "Keys" and "Signature") --------------------------------

def test_a_flipped_byte_in_the_manifest_is_refused(dist):
    path = dist / "alpha" / MANIFEST
    text = path.read_text()
    i = text.index('"nodes": ') + len('"nodes": ')
    path.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:])  # one digit of the plan
    with pytest.raises(BundleError, match=r"alpha/manifest\.json.*modified after signing"):
        load_bundle(dist / "alpha")


def test_a_bundle_signed_by_another_key_is_refused(dist, tmp_path, monkeypatch):
    from nacl.signing import SigningKey

    from edgepart.signing import fingerprint, public_hex

    other = SigningKey.generate()
    m = sign_manifest(_manifest(dist / "alpha"), other)
    (dist / "alpha" / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=fingerprint(public_hex(other))) as e:
        load_bundle(dist / "alpha")
    assert "edgepart keys trust" in str(e.value) and other.encode().hex() not in str(e.value)
    assert load_bundle(dist / "alpha", trusted=[public_hex(other)]).device == "alpha"  # --trust


def test_device_keys_are_private_and_must_match_the_manifest(dist, packaged):
    b = load_bundle(dist / "alpha")
    assert (dist / "alpha" / DEVICE_KEY).stat().st_mode & 0o777 == 0o600
    assert (dist / "app.key").stat().st_mode & 0o777 == 0o600
    assert b.device_keypair().public == b.keys.devices["alpha"]
    assert b.device_keypair().secret not in repr(b.device_keypair())  # a secret never shows in a log line
    (dist / "alpha" / DEVICE_KEY).chmod(0o644)
    with pytest.raises(BundleError, match="chmod 600"):
        b.device_keypair()
    (dist / "alpha" / DEVICE_KEY).chmod(0o600)
    shutil.copy2(dist / "beta" / DEVICE_KEY, dist / "alpha" / DEVICE_KEY)
    with pytest.raises(BundleError, match="not alpha's key"):
        b.device_keypair()


def test_add_client_signs_the_manifests_again_and_keeps_the_plan(dist):
    from edgepart.packager.seal import add_client

    before = load_dist(dist)
    path, new = add_client(dist, "cam2")
    after = load_dist(dist)
    assert new and path == dist / "cam2.key" and path.stat().st_mode & 0o777 == 0o600
    assert {b.plan_id for b in after.values()} == {b.plan_id for b in before.values()}
    assert all(b.keys.clients["cam2"] == read_keypair(path).public for b in after.values())
    assert all(b.keys.devices == before[d].keys.devices for d, b in after.items())
