"""The spatial strategy: a CNN's first layers split by image rows, each device computing its
horizontal strip plus a halo (fused tile partitioning, DeepThings; docs/spatial.md).

    halo.py      the receptive-field arithmetic: the input rows an output strip needs, per op
    planner.py   the fused prefix, the strips by device speed, the halos (pure)
    compiler.py  the tiles, strip and gather steps and their routes
    rest.py      the rest of the model handed to the pipeline planner (rest="pipeline")
    strategy.py  the Strategy (plan, package, report), registered here
"""

from edgepart.packager.strategies.base import register
from edgepart.packager.strategies.spatial.strategy import SpatialPlanned, SpatialStrategy

register(SpatialStrategy())

__all__ = ["SpatialPlanned", "SpatialStrategy"]
