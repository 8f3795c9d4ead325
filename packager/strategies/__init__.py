"""Every way of splitting a model, behind one protocol and one registry (docs/architecture.md).

    base.py      Job, Strategy, Planned, Packaged; register(), get(), names()
    pipeline/    layer-wise stages placed by the cost model
    channel/     every layer split by output channels, with its restructurings
    replicas/    every device holds the whole model and takes its share of the requests

A new strategy is one sub-package here whose __init__ calls `register(...)`.
"""

from edgepart.packager.strategies.base import Job, Packaged, Planned, Strategy, check_options, get, names, register

__all__ = ["Job", "Packaged", "Planned", "Strategy", "check_options", "get", "names", "register"]
