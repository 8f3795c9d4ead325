"""edgepart.agent: on each device, find the peers of its plan and execute its program.

    discovery.py  mDNS announce and browse (zeroconf)
    link.py       ZeroMQ links to peers: hello, heartbeats, reconnection, bounded queues
    executor.py   run this device's steps for every request in flight, route the outputs
    agent.py      AgentCore (async) and Agent (sync facade, embeddable)
    client.py     the caller's side, behind edgepart.InferenceSession

The harnesses that run agents as local processes or in network namespaces are in edgepart.testing
(sdk/testing/: a source checkout's part, not in the wheel).
"""

from .agent import Agent, AgentCore

__all__ = ["Agent", "AgentCore"]
