"""The app's side: the cluster client behind edgepart.InferenceSession (docs/agents.md, "Requests and
deadlines"). It reaches an agent in its own process only through edgepart.agent.net.inproc."""

from .client import ClusterClient
from .failover import FailoverClient

__all__ = ["ClusterClient", "FailoverClient"]
