"""edgepart.agent: the network side of edgepart, in three sub-packages that never import each other's
sides (docs/architecture.md, "The layers"):

    net/     what both sides use: links to peers (link.py), discovery (discovery.py), the picking
             among alternative devices (choose.py), the in-process registry of agents and clients
             and the interfaces they meet through (inproc.py)
    device/  the device's agent: AgentCore and the embeddable Agent (core.py), the executor of its
             program (executor.py), its heap settings (heap.py), the requests a caller's thread runs
             beside it (_direct.py)
    app/     the app's side, behind edgepart.InferenceSession: the cluster client (client.py), the
             choice of a request's path from the plan's hints (paths.py), requests on the
             caller's own sockets (_caller.py)

The harnesses that run agents as local processes or in network namespaces are in edgepart.testing
(sdk/testing/: a source checkout's part, not in the wheel).
"""

from .device import Agent, AgentCore

__all__ = ["Agent", "AgentCore"]
