"""edgepart.packager: on a workstation, turn a trained model and a cluster into per-device bundles.

The entry point (docs/architecture.md, "Packager"):

    package(model, cluster, *, out="dist", strategy="pipeline", ...) -> Packaged   # writes bundles
    plan(model, cluster, *, strategy="pipeline", ...)                -> Planned    # writes nothing

The flow, one sub-package per part:

    model/        read ONNX and what the packager knows of it: graph facts, constant folding, sub-models
    cluster.py    cluster.yaml: devices and links
    cost.py       the cost model: the one place with time formulas (compute, transfer, memory)
    calibrate.py  measure a device's speed (and the loopback link) for the cost model, on this machine
    strategies/   every way of splitting, behind one protocol and a registry: pipeline, channel, replicas, spatial, auto
    wire_codecs.py the codec policy: how each float activation travels between devices
    bundles.py    write any strategy's steps and manifests, staged then moved into place
    formats.py    --format: convert the steps of the devices that run TFLite, after any strategy
    tflite/       ONNX step -> TFLite file: onnx2tf in an environment of its own, the layout perms, the check
    profile_set.py the representative set `edgepart profile` times (shipped in sdk/data/profile/)
    check/        verify a split against the model; the report of a package run (JSON, HTML)
    api.py        package() and plan()
"""

try:
    import onnx  # noqa: F401
except ImportError as e:  # the device install has no onnx: say which extra brings it
    from edgepart.errors import MissingExtraError

    raise MissingExtraError.for_extra("packager", "edgepart.packager", e.name or "onnx") from None

from edgepart.packager.api import package, plan  # noqa: E402
from edgepart.packager.strategies import Packaged, Planned, Strategy, register  # noqa: E402

__all__ = ["Packaged", "Planned", "Strategy", "package", "plan", "register"]
