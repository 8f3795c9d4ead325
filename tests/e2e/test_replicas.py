"""The replicas strategy through real agent processes: every device holds the whole model, the
session sends each request to one of them by the plan's rule (agent/net/choose.py), and the answers are
the model's own (docs/architecture.md, "Alternatives")."""

from __future__ import annotations

import onnx
import pytest

from e2e_helpers import RUN, assert_same, reference, seeded_feeds, write_cluster

import graphs

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("rule", ["round-robin", "least-outstanding"])
def test_replicas_share_the_requests_and_answer_exactly(rule, tmp_path, agents, sessions):
    import edgepart.packager as p

    model = graphs.residual()
    path = tmp_path / "residual.onnx"
    onnx.save(model, str(path))
    cluster = write_cluster(tmp_path / "cluster.yaml", ["dev0", "dev1"], [1.0, 1.0])
    res = p.package(path, cluster, out=tmp_path / "dist", strategy="replicas", rule=rule,
                    model_name=f"replicas-{RUN}-{rule}")
    assert res.plan.strategy == "replicas" and len(res.plan.alternatives) == 1
    assert res.plan.alternatives[0].rule == rule
    assert not [r for r in res.plan.routes if "@caller" not in (r.src, r.dst)], "replicas never talk to each other"
    agents(tmp_path / "dist")
    sess = sessions(tmp_path / "dist", timeout_s=10)
    feeds = [seeded_feeds(res.plan, seed) for seed in range(16)]
    futures = [sess.submit(f) for f in feeds[:10]]  # streamed: several in flight at once
    for seed, fut in enumerate(futures):
        assert_same(fut.result(15), reference(path, feeds[seed]), f"replicas ({rule}), streamed request {seed}")
    for seed in range(10, 16):  # one at a time, answered on the caller's thread
        got = dict(zip([o.name for o in res.plan.outputs], sess.run(None, feeds[seed])))
        assert_same(got, reference(path, feeds[seed]), f"replicas ({rule}), request {seed} run alone")
    picks = sess._client.chooser.picks
    assert sum(picks.values()) == 16
    if rule == "round-robin":
        assert picks == {"dev0": 8, "dev1": 8}
    else:  # run alone, the least loaded is always the first; streamed, both take requests
        assert picks["dev0"] >= 6 and picks["dev1"] >= 1, picks
    assert sess._client.chooser.outstanding() == {"dev0": 0, "dev1": 0}
