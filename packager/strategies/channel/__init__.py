"""The channel strategy: every Conv/Gemm/MatMul layer split by output channels (docs/channel.md).

    compiler.py   the split: layouts, decisions, per-device steps and routes (public entry points)
    _layout.py    which tensor is split how on which device, and each op's decision
    _ops.py       what each ONNX op allows (the rules), the model facts the compiler reads
    _emitter.py   writes every device's nodes from the layouts
    _local.py     per-channel nodes on the channels each device owns
    _norm.py      LayerNorm/BatchNorm over split channels
    _partial.py   partial sums: a contraction's partial products cross instead of its inputs
    restructure/  make the split cheaper: replicate the first layers (exact), RePurpose and low-rank
                  (no retraining), DISCO (training) (docs/sparse.md)
    strategy.py   the Strategy (plan, package with its restructurings, report), registered here
"""

from edgepart.packager.strategies.base import register
from edgepart.packager.strategies.channel.strategy import ChannelPlanned, ChannelStrategy

register(ChannelStrategy())

__all__ = ["ChannelPlanned", "ChannelStrategy"]
