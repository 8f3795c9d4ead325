"""The spatial strategy through real agent processes: the gathering device slices the image, every
device computes its strip of the fused prefix, the strips are joined and the rest of the model runs,
and the answers are the whole model's own (docs/spatial.md).

One agent cluster per strip count serves both models (EfficientNet-Lite0 cut after its fourth block,
RetinaFace at 320 x 320 with the cost model's cut), so the module stays within a few minutes on two
shared cores."""

from __future__ import annotations

import numpy as np
import pytest

from e2e_helpers import REAL_GFLOPS, RUN, assert_same, reference, write_cluster

pytestmark = [pytest.mark.timeout(300), pytest.mark.models]

EFFICIENTNET_UNTIL = "/_blocks.3/_project_conv/Conv"  # the stem and blocks 0-3: 28 rows of 224 / 8
FACE_HW = (320, 320)


def _package(path, n, tmp_path, tag, **kw):
    import edgepart.packager as p

    cluster = write_cluster(tmp_path / f"cluster-{tag}.yaml", [f"dev{i}" for i in range(n)], REAL_GFLOPS[:n])
    return p.package(path, cluster, out=tmp_path / f"dist-{tag}", strategy="spatial",
                     model_name=f"spatial-{tag}-{RUN}-{n}", **kw)


def _memory_line(res) -> str:
    planned = res.planned
    whole = planned.spatial.whole_memory_bytes
    return ", ".join(f"{d} {tot / 2**20:.2f} MiB ({tot / whole:.0%})" for d, _, _, tot in planned.memory()) + \
        f" vs unsplit {whole / 2**20:.2f} MiB"


@pytest.mark.parametrize("n", [2, 3, 4])
def test_efficientnet_and_retinaface_strips_through_agents(n, efficientnet_lite0_path, tmp_path, agents, sessions):
    from edgepart.testing import zoo

    face_path = zoo.retinaface()
    eff = _package(efficientnet_lite0_path, n, tmp_path, "effnet", tile_until=EFFICIENTNET_UNTIL,
                   input_shapes={"input": (1, 3, 224, 224)})
    face = _package(face_path, n, tmp_path, "retinaface", input_shapes={"input": (1, 3, *FACE_HW)})
    for res in (eff, face):
        sp = res.planned.spatial
        assert res.plan.strategy == "spatial" and len(sp.strips) == n
        rows = [s.rows for s in sp.strips]
        assert rows[0][0] == 0 and rows[-1][1] == sp.prefix.until_rows
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:])), "strips tile the output's rows"
        strip_routes = [r for r in res.plan.routes if "__strip" in r.tensor and "@caller" not in (r.src, r.dst)]
        assert len(strip_routes) == 2 * (n - 1), "each other device gets its image strip and sends its rows back"
        print(f"\n{res.plan.model_name}: fused {len(sp.prefix.nodes)} nodes to {sp.prefix.until} "
              f"({sp.prefix.until_rows} rows), strips {rows}, halos "
              f"{[res.planned.halo(s) for s in sp.strips]} image rows; memory {_memory_line(res)}")
    assert eff.planned.spatial.prefix.until == "/_blocks.3/_project_conv/Conv_output_0"
    agents.many([tmp_path / "dist-effnet", tmp_path / "dist-retinaface"])
    s_eff, s_face = sessions.many([tmp_path / "dist-effnet", tmp_path / "dist-retinaface"], timeout_s=30)
    worst = {}
    photos = zoo.imagenet_inputs(2)["input"]
    for i in range(2):
        feeds = {"input": photos[i:i + 1]}
        worst["effnet"] = max(worst.get("effnet", 0.0), assert_same(
            s_eff.submit(feeds).result(30), reference(efficientnet_lite0_path, feeds),
            f"EfficientNet-Lite0, {n} strips, photo {i}"))
    faces = zoo.face_inputs(FACE_HW, 2)["input"]
    for i in range(2):
        feeds = {"input": np.ascontiguousarray(faces[i:i + 1])}
        worst["retinaface"] = max(worst.get("retinaface", 0.0), assert_same(
            s_face.submit(feeds).result(30), reference(face_path, feeds), f"RetinaFace, {n} strips, photo {i}"))
    print(f"{n} strips, max abs diff against one onnxruntime session: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))


def test_efficientnet_strips_then_the_rest_as_a_pipeline_through_agents(efficientnet_lite0_path, tmp_path, agents,
                                                                         sessions):
    """rest="pipeline" (objective throughput, so the stages are balanced): every device computes its
    strip, then one stage of the rest; the routes carry the strips to the first stage's device."""
    from edgepart.testing import zoo

    res = _package(efficientnet_lite0_path, 3, tmp_path, "effnet-rest", tile_until=EFFICIENTNET_UNTIL,
                   input_shapes={"input": (1, 3, 224, 224)}, rest="pipeline", objective="throughput")
    stages = res.planned.rest.pipeline.stages
    assert len(stages) == 3 and all(s.stop > s.start for s in stages)
    print(f"\n{res.plan.model_name}: rest stages "
          + ", ".join(f"{s.device} nodes {s.start}-{s.stop - 1} ({s.flops / 1e6:.0f} MFLOPs)" for s in stages)
          + f"; memory {_memory_line(res)}")
    agents(tmp_path / "dist-effnet-rest")
    sess = sessions(tmp_path / "dist-effnet-rest", timeout_s=30)
    photos = zoo.imagenet_inputs(2)["input"]
    for i in range(2):
        feeds = {"input": photos[i:i + 1]}
        d = assert_same(sess.submit(feeds).result(30), reference(efficientnet_lite0_path, feeds),
                        f"EfficientNet-Lite0, 3 strips then a 3-stage pipeline, photo {i}")
        print(f"photo {i}: max abs diff {d:.2e}")
