"""The rest of the model after the strips, handed to a pipeline split (docs/spatial.md, "The rest").

By default the gathering device joins the strips and runs the rest of the model alone. With
`rest="pipeline"` the rest (the strips' Concat included) is one model of its own, analysed and
placed over every device by the pipeline planner (docs/planning.md): each device then computes
its strip and one stage of the rest. Pure: an in-memory model and its figures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import onnx

from edgepart.packager.cluster import Cluster
from edgepart.packager.cost import caller_io_ms, fork_join_ms
from edgepart.packager.model.graph import Graph
from edgepart.packager.strategies.pipeline.planner import PipelinePlan
from edgepart.packager.strategies.spatial.planner import SpatialPlan, fixed_shapes

REST = ("gather", "pipeline")


@dataclass(frozen=True, eq=False)
class RestPipeline:
    model: onnx.ModelProto  # the strips joined on H, then the rest of the model
    graph: Graph
    pipeline: PipelinePlan
    latency_ms: float  # strips computed and sent to the first stage, then the pipeline

    def memory(self, device: str) -> tuple[int, int]:
        """(weight bytes, peak activation bytes) of `device`'s stage (the cost model's stage memory)."""
        st = next((s for s in self.pipeline.stages if s.device == device), None)
        if st is None:
            return 0, 0
        return int(st.param_bytes), int(st.memory_bytes - st.param_bytes)


def plan_rest(model: onnx.ModelProto, graph: Graph, cluster: Cluster, sp: SpatialPlan,
              objective: str = "latency") -> RestPipeline:
    from edgepart.packager.model.graph import analyse
    from edgepart.packager.strategies.pipeline.planner import plan_pipeline
    from edgepart.packager.strategies.spatial.compiler import gather_model

    gm, ins, _ = gather_model(model, graph, sp)
    shapes = fixed_shapes(model, graph)
    fixed = {}
    for s in ins:
        base = shapes[sp.prefix.until] if s.name.startswith(f"{sp.prefix.until}__strip") else shapes[s.name]
        fixed[s.name] = tuple(d if isinstance(d, int) and d > 0 else base[i] for i, d in enumerate(s.shape))
    g = analyse(gm, fixed)
    # the rest's inputs are the strips' results, not the app's: planned as for an app of its own host,
    # and the app's own transfers added below
    pp = plan_pipeline(g, dataclasses.replace(cluster, caller=None), objective)
    first = pp.stages[0].device
    strips = fork_join_ms(cluster, sp.gather, first, [(s.device, s.in_bytes, s.compute_ms, s.out_bytes) for s in sp.strips],
                          shared=False)
    latency = strips + pp.latency_ms + caller_io_ms(graph, cluster, sp.gather, pp.stages[-1].device)
    return RestPipeline(gm, g, pp, round(float(latency), 6))

