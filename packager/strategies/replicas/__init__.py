"""The replicas strategy: every device holds the whole model and takes its share of the requests
(data parallelism, the baseline a split is compared with).

    strategy.py  the Strategy (plan, package, report), registered here

Its plan names the devices as alternatives (edgepart.plan.Alternatives): the caller sends each
request to one of them by the plan's rule (agent/net/choose.py), so nothing here is run-time code.
"""

from edgepart.packager.strategies.base import register
from edgepart.packager.strategies.replicas.strategy import ReplicasPlanned, ReplicasStrategy

register(ReplicasStrategy())

__all__ = ["ReplicasPlanned", "ReplicasStrategy"]
