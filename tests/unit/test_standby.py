"""Standby devices and fallback plans (docs/failover.md): which plans the packager compiles, over which
devices (pure functions of the cluster), and what it writes: the layout, one key per device across
all plans, manifests that list the spare's key where it takes part, signed; the primary plan (and its
id) exactly as without spares; old bundles without fallbacks load as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import edgepart.packager as p
from edgepart.bundle import FALLBACKS, fallback_dirs, is_device_folder, load_bundle, load_dist, load_fallbacks
from edgepart.errors import BundleError, ClusterError, PlanningError
from edgepart.keys import DEVICE_KEY, read_keypair
from edgepart.packager import standby
from edgepart.packager.cluster import cluster_from_dict

import graphs

LINKS = {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.1}}


def cluster_doc(spares=("spare",), primaries=("a", "b", "c"), memory_mb=1024) -> dict:
    devs = [{"name": n, "gflops": g, "memory_mb": memory_mb} for n, g in zip(primaries, (2e-3, 5e-4, 1e-3, 1e-3))]
    devs += [{"name": n, "gflops": 1e-3, "memory_mb": memory_mb, "standby": True} for n in spares]
    return {"devices": devs, "links": {**LINKS, "pairs": [{"between": ["a", "b"], "bandwidth_mbps": 50}]}}


# -- pure: which plans, over which devices ------------------------------------------------------------

def test_standby_is_read_and_checked():
    cl = cluster_from_dict(cluster_doc())
    assert [d.standby for d in cl.devices] == [False, False, False, True]
    assert standby.spares(cl) == ("spare",)
    bad = cluster_doc()
    bad["devices"][3]["standby"] = "yes"
    with pytest.raises(ClusterError, match=r"devices\[3\]\.standby must be true or false"):
        cluster_from_dict(bad)
    with pytest.raises(ClusterError, match="every device is marked standby"):
        cluster_from_dict(cluster_doc(primaries=()))


def test_primary_cluster_leaves_the_spares_out_and_is_unchanged_without_them():
    cl = cluster_from_dict(cluster_doc(spares=("s1", "s2")))
    prim = standby.primary_cluster(cl)
    assert [d.name for d in prim.devices] == ["a", "b", "c"]
    plain = cluster_from_dict(cluster_doc(spares=()))
    assert standby.primary_cluster(plain) is plain  # no spares: the very same cluster, so the same plan
    assert prim == plain  # with spares: the same devices and links as the cluster without them
    assert standby.fallback_clusters(plain) == ()


def test_one_fallback_per_primary_over_the_others_and_the_spares():
    cl = cluster_from_dict(cluster_doc(spares=("s1", "s2")))
    fbs = standby.fallback_clusters(cl)
    assert [(f.without, f.devices) for f in fbs] == [("a", ("b", "c", "s1", "s2")), ("b", ("a", "c", "s1", "s2")),
                                                     ("c", ("a", "b", "s1", "s2"))]
    assert all(not d.standby for f in fbs for d in f.cluster.devices)  # plain devices of their plan
    # a pair link stays only where both of its devices are in the fallback's cluster
    assert [len(f.cluster.pair_links) for f in fbs] == [0, 0, 1]
    assert standby.fallback_folder(Path("dist"), "s1", "a").as_posix() == "dist/s1/fallback/a"


# -- what package writes ---------------------------------------------------------------------------------

def _package(tmp_path, doc, **kw):
    model = tmp_path / "res.onnx"
    import onnx

    onnx.save(graphs.residual(), str(model))
    cl = tmp_path / "cluster.yaml"
    cl.write_text(yaml.safe_dump(doc))
    return p.package(model, cl, out=tmp_path / "dist", objective="throughput", model_name="res-standby", **kw)


@pytest.fixture(scope="module")
def with_spare(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("spare"), cluster_doc())


def test_the_primary_plan_is_the_plan_without_spares(with_spare, tmp_path):
    plain = _package(tmp_path, cluster_doc(spares=()))
    assert with_spare.plan.plan_id == plain.plan.plan_id
    assert plain.fallbacks == () and not any((plain.out_dir / d / FALLBACKS).exists() for d in ("a", "b", "c"))
    assert "spare" not in with_spare.plan.device_names()


def test_layout_and_keys(with_spare):
    dist = with_spare.out_dir
    assert [f.without for f in with_spare.fallbacks] == ["a", "b", "c"]
    # the spare's folder holds fallbacks only; a primary's, its bundle and the fallbacks it is part of
    assert not (dist / "spare" / "manifest.json").exists() and set(fallback_dirs(dist / "spare")) == {"a", "b", "c"}
    assert is_device_folder(dist / "spare")
    for f in with_spare.fallbacks:
        assert f.without not in f.plan.device_names() and "spare" in f.plan.device_names()
        for d, folder in f.bundle_dirs.items():
            assert folder == dist / d / FALLBACKS / f.without
            b = load_bundle(folder)  # signed, files verified, keys naming exactly its plan's devices
            assert b.device == d and b.plan_id == f.plan.plan_id
            assert set(b.keys.devices) == set(f.plan.device_names())
            assert b.keys.devices["spare"] == read_keypair(dist / "spare" / FALLBACKS / "a" / DEVICE_KEY).public
            # one key per device, whatever plan: its primary bundle's, the spare's in every fallback
            assert read_keypair(folder / DEVICE_KEY) == read_keypair(
                (dist / d if d != "spare" else dist / "spare" / FALLBACKS / "a") / DEVICE_KEY)
            assert b.device_keypair().public == b.keys.devices[d]
            assert (folder / DEVICE_KEY).stat().st_mode & 0o077 == 0
            m = json.loads((folder / "manifest.json").read_text())
            assert m["signature"]["scheme"] == "ed25519"
    primary = load_dist(dist)  # the primary plan loads as it always did; the spare's folder is not part of it
    assert set(primary) == {"a", "b", "c"}
    groups = load_fallbacks(dist)
    assert {w: sorted(g) for w, g in groups.items()} == {f.without: sorted(f.plan.device_names())
                                                         for f in with_spare.fallbacks}
    assert {b.keys.clients["app"] for g in groups.values() for b in g.values()} == {
        primary["a"].keys.clients["app"]}  # the app's key is the primary packaging's


def test_old_bundles_without_fallbacks_load_as_before(tmp_path):
    res = _package(tmp_path, cluster_doc(spares=()))
    assert load_fallbacks(res.out_dir) == {}
    assert fallback_dirs(res.out_dir / "a") == {}
    from edgepart.agent.device.standby import load_folder

    (only,) = load_folder(res.out_dir / "a")
    assert only.without == "" and only.bundle.device == "a"


def test_a_device_folder_serves_every_plan_it_holds(with_spare):
    from edgepart.agent.device.standby import load_folder

    spare = load_folder(with_spare.out_dir / "spare")
    assert [s.without for s in spare] == ["a", "b", "c"] and {s.bundle.device for s in spare} == {"spare"}
    a = load_folder(with_spare.out_dir / "a")
    assert [s.without for s in a] == ["", "b", "c"] and a[0].bundle.plan_id == with_spare.plan.plan_id
    with pytest.raises(BundleError, match="no manifest.json"):
        load_folder(with_spare.out_dir / "nowhere")


def test_packaging_again_replaces_the_fallbacks(tmp_path):
    first = _package(tmp_path, cluster_doc())
    again = _package(tmp_path, cluster_doc(spares=("s1",)))  # another spare: the old one's folder goes
    assert not (tmp_path / "dist" / "spare").exists() and set(fallback_dirs(tmp_path / "dist" / "s1")) == {"a", "b", "c"}
    assert first.plan.plan_id == again.plan.plan_id
    assert set(load_fallbacks(tmp_path / "dist")) == {"a", "b", "c"}
    none = _package(tmp_path, cluster_doc(spares=()))  # no spares any more: no fallbacks left
    assert none.fallbacks == () and load_fallbacks(tmp_path / "dist") == {}
    assert not (tmp_path / "dist" / "s1").exists()


def test_insecure_fallbacks_hold_no_keys(tmp_path):
    res = _package(tmp_path, cluster_doc(), insecure=True)
    for f in res.fallbacks:
        for folder in f.bundle_dirs.values():
            assert not (folder / DEVICE_KEY).exists() and not load_bundle(folder).keys.secure


def test_a_fallback_that_cannot_be_planned_stops_packaging_before_dist_is_touched(tmp_path):
    doc = cluster_doc(primaries=("a",))
    doc["links"].pop("pairs")
    doc["devices"][1]["memory_mb"] = 0.0001  # the spare alone cannot hold the model
    with pytest.raises(PlanningError, match="fallback plan for when a fails"):
        _package(tmp_path, doc)
    assert not (tmp_path / "dist").exists()
    assert not list(tmp_path.glob(".edgepart-*"))  # no scratch folder left


def test_packaged_to_dict_names_the_fallbacks(with_spare):
    d = with_spare.to_dict()
    assert [f["without"] for f in d["fallbacks"]] == ["a", "b", "c"]
    assert all("spare" in f["devices"] for f in d["fallbacks"])


def test_a_client_added_later_is_taken_by_the_fallback_plans_too(tmp_path):
    from edgepart.packager.seal import add_client

    res = _package(tmp_path, cluster_doc())
    path, new = add_client(res.out_dir, "kiosk")
    kiosk = read_keypair(path).public
    assert new and all(b.keys.clients["kiosk"] == kiosk for b in load_dist(res.out_dir).values())
    assert all(b.keys.clients["kiosk"] == kiosk for g in load_fallbacks(res.out_dir).values() for b in g.values())


def test_devices_whose_plans_together_pass_their_memory_are_named(with_spare):
    """Each plan is planned within memory_mb; the packager warns where the plans a device serves at
    once (its primary and fallback bundles, all loaded) pass it together."""
    held = standby.held_bytes(with_spare.bundle_dirs, with_spare.fallbacks)
    assert all(n > 0 for plans in held.values() for n in plans.values())
    assert set(held["spare"]) == {"without a", "without b", "without c"}
    # memory that holds the largest plan of all on its own: the devices whose plans together pass it are named
    mb = max(n for plans in held.values() for n in plans.values()) / 2**20
    want = [d for d in ("a", "b", "c", "spare") if sum(held[d].values()) > mb * 2**20]
    assert want, held
    said = standby.over_memory(cluster_from_dict(cluster_doc(memory_mb=mb)), held)
    assert [w.split()[0] for w in said] == want
    assert f"serves {len(held[want[0]])} plans at once" in said[0] and "more than its memory_mb" in said[0]
    assert standby.over_memory(cluster_from_dict(cluster_doc(memory_mb=1024)), held) == []
