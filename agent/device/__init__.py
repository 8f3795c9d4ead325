"""The device's side: the agent that serves one device's bundle (docs/agents.md)."""

from .core import Agent, AgentCore

__all__ = ["Agent", "AgentCore"]
