"""Every error edgepart raises on purpose, defined once.

    EdgepartError                 base: catch this to catch them all
    ├── ModelError                the model file is missing, not ONNX, or cannot be analysed
    ├── InputShapeError           symbolic input dimensions with no concrete size given
    ├── InputsError               inputs.npz cannot be read or does not match the model
    ├── ClusterError              cluster.yaml is malformed or names something unknown
    ├── PlanningError             no valid plan exists (too many devices, too little memory)
    ├── SourcesError              sources.yaml is malformed or names a device the cluster lacks
    ├── BundleError               a bundle is missing, modified, or of another schema or plan
    ├── ConversionError           a step does not convert to TFLite, or its TFLite twin disagrees
    ├── ProviderError             an execution provider asked for by name is not in this build, or did not start
    ├── WireError                 a network message is malformed (dropped, never fatal to an agent)
    ├── PeerError                 a peer is missing, vanished, or did not answer in time
    │   └── DeadlineExceeded      a request was not answered within its deadline
    │       └── DeadlineRefused   ... refused at once: its source's deadline is out of reach (docs/priority.md)
    └── MissingExtraError         an optional dependency (an extra) is not installed

Every message says what went wrong and what to do about it.
"""

from __future__ import annotations


class EdgepartError(Exception):
    """Base class of every error edgepart raises on purpose."""


class ModelError(EdgepartError):
    """The model cannot be read or analysed."""


class InputShapeError(EdgepartError):
    """A model input has symbolic dimensions and no concrete size was given."""


class InputsError(EdgepartError):
    """Model inputs cannot be read or do not match the model."""


class ClusterError(EdgepartError):
    """The cluster description is malformed."""


class PlanningError(EdgepartError):
    """No plan satisfies the cluster's constraints."""


class SourcesError(EdgepartError):
    """The data sources (sources.yaml: docs/priority.md) are malformed or name an unknown device."""


class BundleError(EdgepartError):
    """A bundle is missing, modified, or does not match this version or plan."""


class ConversionError(EdgepartError):
    """A step cannot be converted to another runtime's format (TFLite), or the converted file does
    not compute what the original does. `step` names it; `operator` is the operator that stopped the
    converter, where one did ("" otherwise), so `--format auto` can fall back and say why."""

    def __init__(self, message: str, *, step: str = "", operator: str = "") -> None:
        super().__init__(message)
        self.step, self.operator = step, operator


class ProviderError(EdgepartError):
    """An execution provider asked for by name is not in this onnxruntime build, or onnxruntime did
    not start it (its libraries or driver did not load) and would run on the others."""


class WireError(EdgepartError):
    """A network message is malformed."""


class PeerError(EdgepartError):
    """A peer is missing, vanished, or did not answer."""


class DeadlineExceeded(PeerError, TimeoutError):
    """A request was not answered within its deadline."""


class DeadlineRefused(DeadlineExceeded):
    """A request was refused at once where it entered the cluster: it was expected to finish past its
    source's deadline (docs/priority.md, "Admission")."""


class MissingExtraError(EdgepartError, ImportError):
    """An optional dependency is missing."""

    @classmethod
    def for_extra(cls, extra: str, what: str, missing: str) -> "MissingExtraError":
        return cls(
            f"{what} needs the '{extra}' extra, but the module {missing!r} is not installed. "
            f'Install it with:  pip install "edgepart[{extra}]"'
        )
