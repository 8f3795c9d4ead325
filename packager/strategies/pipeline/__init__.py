"""The pipeline strategy: each device runs a contiguous run of layers (docs/planning.md).

    planner.py   the layer-wise planner (pure, optimal DP over the cost model)
    compiler.py  cut the stages out, one route per tensor and consuming device, write the bundles
    figure.py    a picture of a plan: one request's timeline, the bytes crossing every cut
    strategy.py  the Strategy (plan, package, report), registered here
"""

from edgepart.packager.strategies.base import register
from edgepart.packager.strategies.pipeline.strategy import PipelinePlanned, PipelineStrategy

register(PipelineStrategy())

__all__ = ["PipelinePlanned", "PipelineStrategy"]
