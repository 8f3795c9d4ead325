"""edgepart: split one trained neural network across several edge devices and run it as one.

The public API is what `__all__` lists (pinned by tests/unit/test_public_api.py); everything else
may change between versions.
"""

import logging

from .bundle import Bundle, load_bundle
from .errors import (
    BundleError,
    ClusterError,
    DeadlineExceeded,
    EdgepartError,
    InputsError,
    InputShapeError,
    MissingExtraError,
    ModelError,
    PeerError,
    PlanningError,
    WireError,
)
from .plan import Codec, Plan, Route, Step, TensorSpec

__version__ = "0.1.0"

logging.getLogger("edgepart").addHandler(logging.NullHandler())

__all__ = [
    "Bundle",
    "BundleError",
    "ClusterError",
    "Codec",
    "DeadlineExceeded",
    "EdgepartError",
    "InputShapeError",
    "InputsError",
    "MissingExtraError",
    "ModelError",
    "PeerError",
    "Plan",
    "PlanningError",
    "Route",
    "Step",
    "TensorSpec",
    "WireError",
    "__version__",
    "load_bundle",
]
