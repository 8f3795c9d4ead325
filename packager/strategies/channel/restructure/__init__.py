"""Restructurings for the channel split: make a trained model need fewer bytes between devices
(docs/architecture.md, "The three ideas"; docs/sparse.md).

    activations.py the split layers, their weights as [C_out, C_in, K], calibration activations
    results.py    what RePurpose and low-rank hand back: the model, its partition, the report
    repurpose.py  RePurpose, no retraining: assign neurons to devices, prune cross-device weights to a
                  communication budget, refit the survivors by least squares on calibration inputs
    lowrank.py    RePurpose's other method: each cross-device block becomes a rank-r projection its
                  sender computes (repurpose(..., method="lowrank"))
    replicate.py  compute for bytes, exactly: every device computes its own copy of the first layers
                  (replicate(model, n, max_extra_macs)); also repurpose(..., replicate=) before lowrank
    disco.py      DISCO, with training (torch, the `models` extra): a group-lasso penalty on the
                  cross-device blocks, prune to the budget, fine-tune with the mask fixed, export ONNX

Each hands back an ONNX model whose zeroed (device, input channel) blocks the channel compiler turns
into smaller routes, and the partition to compile it with (docs/sparse.md).
"""

from edgepart.packager.strategies.channel.restructure.disco import Disco, DiscoReport, disco_train  # torch is imported inside disco_train only
from edgepart.packager.strategies.channel.restructure.replicate import ReplicateReport, replicate
from edgepart.packager.strategies.channel.restructure.repurpose import LayerReport, Repurposed, SparseReport, repurpose

__all__ = ["Disco", "DiscoReport", "LayerReport", "ReplicateReport", "Repurposed", "SparseReport", "disco_train",
           "replicate", "repurpose"]
