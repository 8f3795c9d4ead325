"""--strategy auto: every strategy's own estimate for this model and cluster, ranked; the best for
the objective is the plan (docs/planning.md, "Choosing the split")."""

from edgepart.packager.strategies.auto.strategy import AutoStrategy
from edgepart.packager.strategies.base import register

register(AutoStrategy())
