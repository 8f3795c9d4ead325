"""edgepart: split one trained neural network across several edge devices and run it as one.

The public API is what `__all__` lists (pinned by tests/unit/test_public_api.py); everything else
may change between versions.
"""

import logging

from .bundle import Bundle, load_bundle
from .errors import (
    BundleError,
    ClusterError,
    ConversionError,
    DeadlineExceeded,
    DeadlineRefused,
    EdgepartError,
    InputsError,
    InputShapeError,
    MissingExtraError,
    ModelError,
    PeerError,
    PlanningError,
    ProviderError,
    SourcesError,
    WireError,
)
from .plan import Codec, Plan, Route, Step, TensorSpec
from .session import InferenceSession

__version__ = "0.1.0"

logging.getLogger("edgepart").addHandler(logging.NullHandler())


def __getattr__(name: str):
    # The agent pulls in pyzmq and zeroconf; import it only when asked for.
    if name == "Agent":
        from .agent import Agent

        return Agent
    raise AttributeError(f"module 'edgepart' has no attribute {name!r}")


__all__ = [
    "Agent",
    "Bundle",
    "BundleError",
    "ClusterError",
    "Codec",
    "ConversionError",
    "DeadlineExceeded",
    "DeadlineRefused",
    "EdgepartError",
    "InferenceSession",
    "InputShapeError",
    "InputsError",
    "MissingExtraError",
    "ModelError",
    "PeerError",
    "Plan",
    "PlanningError",
    "ProviderError",
    "Route",
    "SourcesError",
    "Step",
    "TensorSpec",
    "WireError",
    "__version__",
    "load_bundle",
]
