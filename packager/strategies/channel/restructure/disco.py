"""DISCO (docs/architecture.md, "The three ideas"; arXiv 2302.11180): train a PyTorch model so that its channel split needs
few bytes between devices.

    disco_train(module, n_devices or partition, (x, y), example_input=...) -> Disco(module, partition, model, report)

    1. penalty   train with loss + lam x sum over the cross-device blocks W[rows of device k, input
                 channel c] of ||block||_2, each weighted by the bytes channel c costs to send
                 (group lasso: whole blocks go to zero together)
    2. prune     keep the blocks with the most weight energy per byte until `budget` x the dense
                 channel split's bytes is reached, zero the rest
    3. fine-tune with that mask fixed (masked weights are zeroed after every step, so they stay
                 exactly zero), then export ONNX

Optionally (`within_keep` < 1) also within-device blocks W[rows of device k, input channel c that k
holds itself] are penalised the same way and pruned to keep that share of each layer's own blocks,
by weight energy: a device whose rows no longer read one of its own channels skips that column
entirely, so this cuts compute (the compiler slices each device's weights to the channels it uses).

Which torch weight is which split layer, and which device owns each of its input channels, comes
from the channel compiler itself: the module is exported to ONNX, and the compiler's layout of that
export (residual streams, flattens and all) gives the blocks. `partition` is keyed by that export's
tensor names, so `package_channel(result.model, ..., partition=result.partition)` compiles it.
torch is the `models` extra and is imported only here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import onnx

from edgepart.errors import MissingExtraError, ModelError, PlanningError

from edgepart.packager.strategies.channel.compiler import channel_bytes
from edgepart.packager.strategies.channel._layout import BytesReport
from edgepart.packager.strategies.channel._ops import ModelInfo, attr
from edgepart.packager.model.graph import analyse
from edgepart.packager.strategies.channel.restructure.activations import Layer, set_owners, find_layers
from edgepart.packager.strategies.channel.restructure.repurpose import dense_bytes_of, repurpose, select_blocks

PENALTIES = ("group_lasso",)


def _torch():
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError.for_extra("models", "DISCO training", e.name or "torch") from None
    return torch


@dataclass(frozen=True)
class DiscoReport:
    n_devices: int
    budget: float
    bytes: BytesReport  # channel_bytes of the exported model: dense vs used, per split layer
    history: tuple["Epoch", ...]
    kept_blocks: tuple[tuple[str, int, int], ...]  # per split layer: (node, cross blocks kept, cross blocks)
    within_keep: float = 1.0
    kept_own: tuple[tuple[str, int, int], ...] = ()  # per split layer: (node, own blocks kept, own blocks)
    macs: tuple[int, int] = (0, 0)  # split layers' multiply-accumulates per inference: dense, after pruning

    @property
    def ratio(self) -> float:
        return self.bytes.ratio

    def to_dict(self) -> dict:
        return {"n_devices": self.n_devices, "budget": self.budget, "dense_bytes": self.bytes.dense_bytes,
                "used_bytes": self.bytes.used_bytes, "ratio": self.ratio,
                "history": [h._asdict() for h in self.history], "kept_blocks": [list(k) for k in self.kept_blocks],
                "within_keep": self.within_keep, "kept_own": [list(k) for k in self.kept_own],
                "macs_dense": self.macs[0], "macs_used": self.macs[1]}


class Epoch(NamedTuple):
    phase: str  # penalty | finetune
    epoch: int
    loss: float  # mean training loss
    penalty: float  # mean group-lasso term, weighted (lam x bytes on cross blocks, within_lam on own ones)
    lam: float
    used_fraction: float  # bytes of the non-zero cross blocks / the dense split's, at the epoch's end


class Disco(NamedTuple):
    module: Any  # the trained torch module, cross-device blocks outside the budget exactly zero
    partition: dict[str, np.ndarray]  # keyed by the exported model's tensor names
    model: onnx.ModelProto  # the module exported to ONNX
    report: DiscoReport


def export_onnx(module, example_input, input_names: Sequence[str] = ("x",),
                output_names: Sequence[str] = ("y",), opset: int = 17) -> onnx.ModelProto:
    """The module exported to ONNX (TorchScript exporter), batch axis dynamic on every input and output."""
    torch = _torch()
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    buf = io.BytesIO()
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes read as numbers
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=axes)
    finally:
        module.train(was)
    return onnx.load_from_string(buf.getvalue())


@dataclass(eq=False)
class _Blocks:
    """One split layer's cross-device blocks, in the torch weight's [C_out, C_in] terms."""

    layer: Layer
    param: Any  # the torch weight
    transposed: bool  # the torch weight is [C_in, C_out] (exported as MatMul)
    onehot_out: Any  # torch [n, C_out]: device of each output channel
    cross: Any  # torch bool [n, C_in]: device k has rows and input channel c lives elsewhere
    own: Any  # torch bool [n, C_in]: device k has rows and holds input channel c itself
    scale: float  # bytes per input channel / mean over layers


def _match(module, model: onnx.ModelProto, layers: Sequence[Layer]) -> dict[str, tuple[Any, bool]]:
    """The torch parameter behind each layer's ONNX weight: by name, else by value."""
    from onnx import numpy_helper

    params = dict(module.named_parameters())
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for L in layers:
        w = numpy_helper.to_array(inits[L.w])
        in_out = L.op == "MatMul" or (L.op == "Gemm" and not attr(L.proto, "transB", 0))  # ONNX W is [C_in, C_out]
        p = params.get(L.w)
        if p is not None and tuple(p.shape) == w.shape:
            out[L.node] = (p, in_out)
            continue
        for p in params.values():
            a = p.detach().cpu().numpy()
            if a.shape == w.shape and np.array_equal(a, w):
                out[L.node] = (p, in_out)
                break
            if a.ndim == 2 and a.T.shape == w.shape and np.array_equal(a.T, w):
                out[L.node] = (p, not in_out)
                break
        else:
            raise ModelError(f"No torch parameter of the module matches the ONNX weight {L.w!r} of {L.node!r}; "
                             f"DISCO needs the exported weights unchanged (no Conv+BatchNorm fusion): keep "
                             f"BatchNorm separate or train the fused module.")
    return out


def _batches(train_data, batch_size: int, gen):
    torch = _torch()
    if isinstance(train_data, tuple) and len(train_data) == 2:
        x, y = (torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t for t in train_data)
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            yield x[idx], y[idx]
    else:
        yield from train_data


def disco_train(module, partition: int | Mapping[str, np.ndarray], train_data, *, example_input,
                penalty: str = "group_lasso", lam: float = 1.0, budget: float = 0.2, epochs: int = 30,
                finetune_epochs: int = 20, lr: float = 1e-3, finetune_lr: float = 1e-3, batch_size: int = 64,
                loss_fn=None, input_names: Sequence[str] = ("x",), output_names: Sequence[str] = ("y",),
                assign_calib: Mapping[str, np.ndarray] | None = None, gradual: bool = True,
                within_keep: float = 1.0, within_lam: float | None = None, seed: int = 0) -> Disco:
    """Train `module` (in place) for a channel split with at most `budget` x the dense split's bytes.

    `partition`: the number of devices (contiguous blocks, or RePurpose's assignment on the
    pretrained weights when `assign_calib` holds calibration inputs), or a partition keyed by the
    export's Conv/Gemm/MatMul output names. `train_data`: (x, y) arrays, or any re-iterable of
    (x, y) torch batches (a DataLoader). `within_keep` < 1 also prunes within-device blocks to keep
    that share of each split layer's own (device, input channel) blocks, cutting compute; their
    group-lasso weight is `within_lam` (default `lam`)."""
    torch = _torch()
    if penalty not in PENALTIES:
        raise PlanningError(f"Unknown DISCO penalty {penalty!r}; choose one of {list(PENALTIES)}.")
    if not 0.0 <= budget <= 1.0:
        raise PlanningError(f"budget is a fraction of the dense channel split's bytes, in 0..1; got {budget}.")
    if not 0.0 < within_keep <= 1.0:
        raise PlanningError(f"within_keep is the share of within-device weight blocks kept, in (0, 1]; got {within_keep}.")
    within_lam = lam if within_lam is None else within_lam
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)

    model = export_onnx(module, example_input, input_names, output_names)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    shapes = {n: (1,) + tuple(a.shape[1:]) for n, a in zip(input_names, args)}
    graph = analyse(model, shapes)
    info = ModelInfo(model, graph)
    if isinstance(partition, int):
        n = partition
        part = repurpose(model, assign_calib, n, 1.0, steps=("assign",)).partition if assign_calib else None
    else:
        part = {k: np.asarray(v, dtype=np.int64) for k, v in partition.items()}
        n = 1 + max(int(v.max()) for v in part.values())
    layers = find_layers(model, graph, n, info)
    set_owners(model, graph, n, part, info, layers)
    split = [L for L in layers if L.kind == "contract" and L.in_owner is not None and L.out_owner is not None]
    params = _match(module, model, split)
    mean_bpc = np.mean([L.bytes_per_channel for L in split]) if split else 1.0
    blocks = []
    for L in split:
        p, transposed = params[L.node]
        onehot = torch.as_tensor(np.eye(n)[L.out_owner].T, dtype=p.dtype)
        has_rows = np.bincount(L.out_owner, minlength=n)[:, None] > 0
        cross = torch.as_tensor(has_rows & (L.in_owner[None, :] != np.arange(n)[:, None]))
        own = torch.as_tensor(has_rows & (L.in_owner[None, :] == np.arange(n)[:, None]))
        blocks.append(_Blocks(L, p, transposed, onehot, cross, own, L.bytes_per_channel / mean_bpc))

    def block_sq(b: _Blocks):  # [n, C_in]: energy of each (device, input channel) block
        w = b.param.T if b.transposed else b.param
        return b.onehot_out @ (w.reshape(w.shape[0], w.shape[1], -1) ** 2).sum(2)

    pruning_own = within_keep < 1.0

    def group_lasso():
        """The penalty, weights included: lam x cross blocks (x bytes) + within_lam x own blocks."""
        total = 0.0
        for b in blocks:
            norms = torch.sqrt(block_sq(b) + 1e-12)
            total = total + lam * b.scale * (norms * b.cross).sum()
            if pruning_own:
                total = total + within_lam * (norms * b.own).sum()
        return total

    history: list[Epoch] = []

    def shrink(lr: float) -> None:
        """Proximal step of the group lasso: each cross block shrinks towards zero by lr x lam x its
        bytes weight (own blocks, when pruned too, by lr x within_lam), and reaches exactly zero (as
        with AdamW's decoupled weight decay, not through Adam)."""
        for b in blocks:
            norms = torch.sqrt(block_sq(b))
            factor = torch.where(b.cross, torch.clamp(1 - lr * lam * b.scale / torch.clamp(norms, min=1e-12), min=0),
                                 torch.ones_like(norms))  # [n, C_in]
            if pruning_own:  # own blocks shrink by their own weight (compute, not bytes)
                factor = torch.where(b.own, torch.clamp(1 - lr * within_lam / torch.clamp(norms, min=1e-12), min=0),
                                     factor)
            rows = b.onehot_out.T @ factor  # [C_out, C_in]: each output row takes its device's factors
            rows = rows.T if b.transposed else rows
            b.param.mul_(rows.reshape(*rows.shape, *([1] * (b.param.dim() - 2))))

    dense = sum(dense_bytes_of(b.layer) for b in blocks)

    def used_fraction() -> float:
        """Bytes of the cross blocks still non-zero / the dense split's bytes."""
        with torch.no_grad():
            used = sum(b.layer.bytes_per_channel * float(((block_sq(b) > 0) & b.cross).sum()) for b in blocks)
        return used / dense if dense else 0.0

    masks: dict[str, np.ndarray] = {}  # node -> bool [n, C_in]: cross blocks pruned (zero from now on)

    def prune_to(fraction: float, left: float = 0.0) -> None:
        """Keep the cross blocks with the most weight energy per byte (share of the layer's energy)
        within `fraction` x the dense bytes; blocks pruned before stay pruned."""
        queues = {}
        with torch.no_grad():
            for b in blocks:
                sq = block_sq(b).cpu().numpy().astype(np.float64)
                total = max(sq.sum(), 1e-30)
                live = b.cross.cpu().numpy() & ~masks.get(b.layer.node, False)
                queues[b.layer.node] = [(k, sorted(((int(c), sq[k, c] / total) for c in np.flatnonzero(live[k])),
                                                   key=lambda t: -t[1])) for k in range(n) if live[k].any()]
        keep = select_blocks(split, queues, fraction * dense, "global", fraction)
        for b in blocks:
            m = b.cross.cpu().numpy().copy()
            for k, c in keep[b.layer.node]:
                m[k, c] = False
            if pruning_own:
                m |= own_pruned(b, within_keep + (1 - within_keep) * left ** 3)  # the same schedule
            masks[b.layer.node] = m
        apply_masks()

    def own_pruned(b: _Blocks, keep_share: float) -> np.ndarray:
        """bool [n, C_in]: the own blocks pruned so that the strongest `keep_share` of this layer's
        stay (those pruned before stay pruned; every device keeps its strongest one)."""
        with torch.no_grad():
            sq = block_sq(b).cpu().numpy()
        own = b.own.cpu().numpy()
        out = masks.get(b.layer.node, np.zeros_like(own)) & own
        live = sorted(zip(*np.nonzero(own & ~out)), key=lambda kc: -sq[kc])
        n_keep = int(round(keep_share * own.sum()))
        first = {}
        for k, c in live:
            first.setdefault(k, c)
        for i, (k, c) in enumerate(live):
            if i >= n_keep and first[k] != c:
                out[k, c] = True
        return out

    def apply_masks() -> None:
        with torch.no_grad():
            for b in blocks:
                m = masks.get(b.layer.node)
                if m is None:
                    continue
                rows = ~(b.onehot_out.T.bool().cpu().numpy() @ m)  # [C_out, C_in]: False where pruned
                mt = torch.as_tensor(rows.T if b.transposed else rows, dtype=b.param.dtype)
                b.param.mul_(mt.reshape(*mt.shape, *([1] * (b.param.dim() - 2))))

    penalised = bool(lam or (pruning_own and within_lam))

    def train(phase: str, n_epochs: int, opt, penalty_on: bool = False, sched=None):
        for epoch in range(n_epochs):
            module.train()
            losses, pens = [], []
            for xb, yb in _batches(train_data, batch_size, gen):
                opt.zero_grad()
                loss = loss_fn(module(xb), yb)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if penalty_on and penalised:
                        shrink(opt.param_groups[0]["lr"])
                        pens.append(float(group_lasso()))
                apply_masks()
                losses.append(float(loss.detach()))
            if phase == "penalty" and gradual and epoch >= epochs // 2:
                # prune gradually over the second half (Zhu & Gupta's cubic schedule) to the budget
                left = 1 - (epoch + 1 - epochs // 2) / max(epochs - epochs // 2, 1)
                prune_to(budget + (1 - budget) * left ** 3, left)
            history.append(Epoch(phase, epoch, float(np.mean(losses)), float(np.mean(pens)) if pens else 0.0,
                                 lam if penalty_on else 0.0, used_fraction()))
            if sched is not None:
                sched.step()

    torch.manual_seed(seed)
    train("penalty", epochs, torch.optim.Adam(module.parameters(), lr=lr), penalty_on=True)
    prune_to(budget)
    kept = tuple((b.layer.node, int((b.cross.cpu().numpy() & ~masks[b.layer.node]).sum()), int(b.cross.sum()))
                 for b in blocks)
    kept_own = tuple((b.layer.node, int((b.own.cpu().numpy() & ~masks[b.layer.node]).sum()), int(b.own.sum()))
                     for b in blocks)
    opt = torch.optim.Adam(module.parameters(), lr=finetune_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(finetune_epochs, 1))  # settle, don't wander
    train("finetune", finetune_epochs, opt, sched=sched)
    module.eval()

    out = export_onnx(module, example_input, input_names, output_names)
    out_graph = analyse(out, shapes)
    final_part = {L.y: L.out_owner for L in layers if L.kind == "contract" and L.out_owner is not None}
    macs = (sum(_macs(b, None) for b in blocks), sum(_macs(b, masks.get(b.layer.node)) for b in blocks))
    report = DiscoReport(n, budget, channel_bytes(out_graph, final_part, out, n), tuple(history), kept,
                         within_keep, kept_own, macs)
    return Disco(module, final_part, out, report)


def _macs(b: _Blocks, pruned: np.ndarray | None) -> int:
    """A split layer's MACs per inference when each device computes its rows over the input
    channels it still reads (`pruned`: bool [n, C_in] blocks zeroed)."""
    L = b.layer
    rows = b.onehot_out.sum(1).cpu().numpy().astype(np.int64)  # rows per device
    read = (b.own.cpu().numpy() | b.cross.cpu().numpy())
    if pruned is not None:
        read = read & ~pruned
    k = int(np.prod(L.w_shape[2:])) if L.op == "Conv" else 1
    return int(sum(rows[d] * read[d].sum() for d in range(len(rows))) * k * L.per_sample)


__all__ = ["Disco", "DiscoReport", "disco_train", "export_onnx"]
