"""edgepart.packager: on a workstation, turn a trained model and a cluster into per-device bundles.

    graph.py     read ONNX, shapes, FLOPs, bytes, what crosses each cut
    cluster.py   cluster.yaml
    cost.py      the cost model (compute, transfer, memory)
    calibrate.py measure a device's speed (and the loopback link) for the cost model, on this machine
    pipeline.py  the layer-wise pipeline planner (pure, optimal DP)
    emit.py      cut stages out as standalone ONNX models
    channel*.py  the channel-parallel split: every layer's output channels across devices (docs/channel.md)
    sparse/      make cross-device traffic sparse: RePurpose (no retraining), DISCO (training) (docs/sparse.md)
    package.py   model + cluster -> dist/<device>/ bundles (pipeline)
    bundles.py   write any strategy's steps and manifests, staged then moved into place
    verify.py    prove the split is exact
    figure.py    a picture of a plan
    report.py    the report of a package run (bytes, compute, parameters, fidelity); report_html.py writes it
"""

try:
    import onnx  # noqa: F401
except ImportError as e:  # the device install has no onnx: say which extra brings it
    from edgepart.errors import MissingExtraError

    raise MissingExtraError.for_extra("packager", "edgepart.packager", e.name or "onnx") from None

from . import channel, cluster, cost, emit, graph, package, pipeline  # noqa: E402

__all__ = ["channel", "cluster", "cost", "emit", "graph", "package", "pipeline"]
