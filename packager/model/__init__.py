"""The model as the packager reads it (docs/architecture.md, "Packager").

    graph.py     load ONNX, analyse it: shapes, FLOPs, bytes, what crosses each cut
    fold.py      fold what is computed from constants alone into initializers
    submodel.py  cut a run of nodes out as a standalone ONNX model, and save it
"""
