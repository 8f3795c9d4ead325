"""Sparse channel splits of a CNN trained here on scikit-learn's digits (issue 4): RePurpose (no
retraining) and DISCO (training) cut the bytes crossing devices at least 5x against the dense channel
split, within 1 point of the unsplit model's test accuracy, at 2 and 4 devices; the packaged sparse
split runs through LocalCluster exactly as the pruned model does whole, and its routes carry exactly
the bytes the report counts. An ablation at equal bytes: the full RePurpose pipeline beats plain
magnitude pruning and beats assignment without adjustment.

Every accuracy claim is measured over the seeds of tests/models/seeds.py (each its own train/test
split, training run, calibration positions and so partition) and asserted on the median and the
worst seed's drop against that seed's unsplit model, with margins (docs/sparse.md, "What the tests
show"): one seed's digits change with the CPU and the thread count."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

# the first test to run trains the CNN once per seed (about 1 min on 2 idle cores, several on a busy machine)
pytestmark = [pytest.mark.models, pytest.mark.timeout(1200), pytest.mark.usefixtures("pinned_threads")]

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from digits_cnn import digits_cnn, env_threads, torch_threads  # noqa: E402
from seeds import SEEDS, Spread, pinned_threads, session_options  # noqa: E402, F401  (a fixture)

from edgepart.local import LocalCluster  # noqa: E402
from edgepart.packager.strategies.channel.compiler import channel_bytes, compile_channel, package_channel  # noqa: E402
from edgepart.packager.cluster import cluster_from_dict  # noqa: E402
from edgepart.packager.model.graph import analyse  # noqa: E402
from edgepart.packager.strategies.channel.restructure import repurpose  # noqa: E402
from edgepart.packager.strategies.channel.restructure.disco import disco_train  # noqa: E402

BUDGET = 0.15  # of the dense channel split's bytes: 6.7x fewer, leaving room for the classifier's few bytes
ATOL = 1e-4
SHAPES = {"x": (1, 1, 8, 8)}
# Accuracy margins over SEEDS, in points lost against each seed's own unsplit model (450 test images:
# one image is 0.22 points). Measured on one CPU at 1 and 2 threads (docs/sparse.md, "What the tests
# show"): RePurpose and DISCO lose at most 0.44 at the median and 0.67 at the worst seed; the CPU that
# failed the single-seed test lost 1.78 on one seed. The claim is the median within 1 point; the worst
# seed is held to 2.5, headroom for another CPU's training run.
MEDIAN_DROP = 0.01
WORST_DROP = 0.025
# within_keep=0.5 also prunes half of each device's own blocks and loses more (docs/sparse.md, DISCO):
# measured median 1.33-1.78 and worst 2.22-2.44 points.
WITHIN_MEDIAN_DROP = 0.03
WITHIN_WORST_DROP = 0.05


def cluster(n: int):
    return cluster_from_dict({"devices": [{"name": f"dev{i}", "gflops": 5} for i in range(n)],
                              "links": {"default": {"bandwidth_mbps": 50, "latency_ms": 1}}})


def logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def accuracy(model: onnx.ModelProto, data) -> float:
    return float((logits(model, data.x_test).argmax(1) == data.y_test).mean())


class Sweep:
    """The digits CNN trained with each seed and the sparse runs on it, each made once and shared
    by the tests that read it (one training run per seed, one RePurpose / DISCO run per setting)."""

    def __init__(self):
        self._runs: dict = {}

    def _once(self, key, make):
        if key not in self._runs:
            self._runs[key] = make()
        return self._runs[key]

    def digits(self, seed: int):
        """(model, data, unsplit test accuracy by onnxruntime) of the CNN trained with `seed`."""
        def make():
            model, data = digits_cnn(seed)
            assert data.accuracy >= 0.95, f"the digits CNN of seed {seed} reached only {data.accuracy:.3f}"
            return model, data, accuracy(model, data)
        return self._once(("digits", seed), make)

    def repurpose(self, seed: int, n: int, name: str = "full RePurpose"):
        kw = {"magnitude prune": dict(steps=("prune",), selection="magnitude"),
              "assign+prune": dict(steps=("assign", "prune")), "full RePurpose": {}}[name]
        model, data, _ = self.digits(seed)
        return self._once(("repurpose", seed, n, name),
                          lambda: repurpose(model, {"x": data.x_train}, n, BUDGET, seed=seed, **kw))

    def disco(self, seed: int, n: int, within_keep: float = 1.0):
        """DISCO trains the unsplit CNN on for 40 epochs: the penalty (pruning gradually to the
        budget), then fine-tuning with the mask fixed."""
        model, data, _ = self.digits(seed)

        def make():
            torch.set_num_threads(torch_threads())
            return disco_train(trained_net(model), n, (data.x_train, data.y_train),
                               example_input=torch.zeros(1, 1, 8, 8), output_names=("logits",), budget=BUDGET,
                               lam=3.0, epochs=20, finetune_epochs=20, lr=3e-3, finetune_lr=3e-3, seed=seed,
                               within_keep=within_keep)
        return self._once(("disco", seed, n, within_keep), make)


@pytest.fixture(scope="module")
def sweep(pinned_threads):
    return Sweep()


def check_spread(spread: Spread, record_property, median_drop: float = MEDIAN_DROP, worst_drop: float = WORST_DROP):
    """Print the spread after the run (tests/conftest.py), then hold it to the margins."""
    record_property("seed_spread", spread.line())
    assert spread.median_drop <= median_drop and spread.worst_drop <= worst_drop, spread.line()


def check_packaged(model, dense_model, partition, report_bytes, n, data, tmp_path) -> tuple[int, int]:
    """Package the sparse model, run it through LocalCluster: equal to the model run whole, and the
    routes carry what the report counts. Returns (cross-device bytes of all routes, dense ones)."""
    graph = analyse(model, SHAPES)
    res = package_channel(model, graph, cluster(n), tmp_path / "dist", partition=partition, model_name="digits")
    assert not res.report.notes  # the partition respects the compiler's rules as given
    got = LocalCluster.from_dist(tmp_path / "dist", threads=env_threads()).run({"x": data.x_test})["logits"]
    assert np.max(np.abs(got - logits(model, data.x_test))) <= ATOL

    # per split layer: the bytes its input's routes carry == the report's used bytes
    routed: dict[str, int] = {}
    for r in res.report.routes:
        if "@caller" not in (r.src, r.dst):
            base = r.tensor.split("@")[0]
            routed[base] = routed.get(base, 0) + r.size_bytes
    assert res.report.layers.used_bytes == report_bytes.used_bytes
    for layer in report_bytes.layers:
        assert routed.pop(layer.input, 0) == layer.used_bytes, layer.node
    # what is left is the classifier's input or partial sums, the fewest bytes the compiler found
    (fc,) = [d for _, op, d in res.report.decisions if op == "Gemm"]
    assert sum(routed.values()) == min(b for _, b in fc.options)
    dense = compile_channel(dense_model, analyse(dense_model, SHAPES), cluster(n)).report.cross_device_bytes
    return res.report.cross_device_bytes, dense


# -- RePurpose --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_repurpose_5x_fewer_bytes_within_one_point(sweep, n, tmp_path, record_property):
    accs, wholes, lines = [], [], []
    for seed in SEEDS:
        model, data, acc_whole = sweep.digits(seed)
        r = sweep.repurpose(seed, n)
        dense = channel_bytes(analyse(model, SHAPES), None, model, n)
        assert r.report.dense_bytes == dense.dense_bytes == dense.used_bytes
        assert r.report.used_bytes <= BUDGET * dense.dense_bytes
        assert r.report.ratio >= 5
        cross, cross_dense = check_packaged(r.model, model, r.partition, r.report.bytes, n, data,
                                            tmp_path / f"seed{seed}")
        assert cross_dense / cross >= 5

        # every step measured per layer: the split layers keep more strength inside a device after the
        # assignment, and the adjustment cuts each pruned layer's output error
        split = [x for x in r.report.layers if x.dense_bytes]
        assert sum(x.inside_assigned for x in split) > sum(x.inside_default for x in split), seed
        for x in split:
            assert x.error < x.error_pruned, (seed, x.node)
        accs.append(accuracy(r.model, data))
        wholes.append(acc_whole)
        lines.append(f"seed {seed}: split layers {dense.dense_bytes} -> {r.report.used_bytes} B "
                     f"({r.report.ratio:.2f}x); all routes {cross_dense} -> {cross} B ({cross_dense / cross:.2f}x)")
    spread = Spread(f"RePurpose {n} devices, test accuracy", tuple(accs), tuple(wholes))
    print(f"\n{spread.line()}\n" + "\n".join(lines) + f"\n{sweep.repurpose(SEEDS[0], n).report.table()}")
    check_spread(spread, record_property)


@pytest.mark.parametrize("n", [2, 4])
def test_ablation_full_repurpose_beats_magnitude_and_no_adjust(sweep, n, record_property):
    """On every seed, at equal bytes: full RePurpose is more accurate and closer in logits than
    magnitude pruning and than assign+prune without the refit (tens of points apart: see
    docs/sparse.md)."""
    acc: dict[str, list[float]] = {}
    err: dict[str, list[float]] = {}
    for seed in SEEDS:
        model, data, _ = sweep.digits(seed)
        want = logits(model, data.x_test)
        runs = {name: sweep.repurpose(seed, n, name) for name in ("magnitude prune", "assign+prune", "full RePurpose")}
        rows = {}
        for name, r in runs.items():
            out = logits(r.model, data.x_test)
            rows[name] = (r.report.used_bytes, float((out.argmax(1) == data.y_test).mean()),
                          float(np.linalg.norm(out - want) / np.linalg.norm(want)))
            acc.setdefault(name, []).append(rows[name][1])
            err.setdefault(name, []).append(rows[name][2])
        full = rows.pop("full RePurpose")
        for name, (used, a, e) in rows.items():
            assert full[0] <= used <= BUDGET * runs[name].report.dense_bytes  # equal budget; full sends no more
            assert full[1] > a and full[2] < e, f"seed {seed}, {name}: {a:.4f}/{e:.3f} vs full {full[1]:.4f}/{full[2]:.3f}"
    spreads = [Spread(f"{n} devices, {name}, test accuracy", tuple(v)) for name, v in acc.items()]
    spreads += [Spread(f"{n} devices, {name}, logit rel. error", tuple(v), higher_is_better=False)
                for name, v in err.items()]
    for s in spreads:
        record_property("seed_spread", s.line())
    print("\n" + "\n".join(s.line() for s in spreads))


# -- DISCO ------------------------------------------------------------------------------------------------

class DigitsNet(torch.nn.Module):
    """The digits CNN of tests/models/digits_cnn.py, as a torch module to train."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        F = torch.nn.functional
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c3(F.max_pool2d(x, 2)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


def trained_net(model: onnx.ModelProto) -> DigitsNet:
    """The torch module with the trained weights of the ONNX model (same parameter names)."""
    net = DigitsNet()
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
             if i.name in net.state_dict()}
    net.load_state_dict(state, strict=True)
    return net


@pytest.mark.parametrize("n", [2, 4])
def test_disco_5x_fewer_bytes_within_one_point(sweep, n, tmp_path, record_property):
    accs, wholes, lines = [], [], []
    for seed in SEEDS:
        model, data, acc_whole = sweep.digits(seed)
        r = sweep.disco(seed, n)
        assert r.report.bytes.used_bytes <= BUDGET * r.report.bytes.dense_bytes
        assert r.report.ratio >= 5
        with torch.no_grad():  # the module and its export agree, zeros included
            np.testing.assert_allclose(r.module(torch.from_numpy(data.x_test)).numpy(), logits(r.model, data.x_test),
                                       atol=ATOL)
        cross, cross_dense = check_packaged(r.model, model, r.partition, r.report.bytes, n, data,
                                            tmp_path / f"seed{seed}")
        assert cross_dense / cross >= 5
        accs.append(accuracy(r.model, data))
        wholes.append(acc_whole)
        lines.append(f"seed {seed}: split layers {r.report.bytes.dense_bytes} -> {r.report.bytes.used_bytes} B "
                     f"({r.report.ratio:.2f}x); all routes {cross_dense} -> {cross} B; {len(r.report.history)} epochs")
    spread = Spread(f"DISCO {n} devices, test accuracy", tuple(accs), tuple(wholes))
    print(f"\n{spread.line()}\n" + "\n".join(lines))
    check_spread(spread, record_property)


def test_disco_can_also_prune_within_devices_to_cut_compute(sweep, record_property):
    """within_keep=0.5: each split layer keeps half its within-device blocks; the compiled split
    computes fewer MACs per device than DISCO without it, sends the same bytes, and stays accurate
    (a wider margin than without it: it keeps half the weights of its own blocks too)."""
    accs, wholes, macs_ratio = [], [], []
    for seed in SEEDS:
        model, data, acc_whole = sweep.digits(seed)
        runs = {}
        for keep in (1.0, 0.5):
            r = sweep.disco(seed, 2, keep)
            compiled = compile_channel(r.model, analyse(r.model, SHAPES), cluster(2), r.partition).report
            runs[keep] = (r, sum(dict(compiled.macs).values()))
        r, macs = runs[0.5]
        assert all(kept == round(0.5 * total) for _, kept, total in r.report.kept_own), r.report.kept_own
        assert all(kept == total for _, kept, total in runs[1.0][0].report.kept_own)
        assert r.report.macs[1] < 0.7 * runs[1.0][0].report.macs[1], seed  # the split layers' own count
        assert macs < 0.8 * runs[1.0][1], seed  # what the compiled devices compute, all layers
        assert r.report.ratio >= 5 and r.report.bytes.used_bytes <= BUDGET * r.report.bytes.dense_bytes
        accs.append(accuracy(r.model, data))
        wholes.append(acc_whole)
        macs_ratio.append(macs / runs[1.0][1])
    spread = Spread("DISCO within_keep 0.5, 2 devices, test accuracy", tuple(accs), tuple(wholes))
    macs_spread = Spread("DISCO within_keep 0.5, 2 devices, compiled MACs vs without", tuple(macs_ratio),
                         higher_is_better=False)
    record_property("seed_spread", macs_spread.line())
    print(f"\n{spread.line()}\n{macs_spread.line()}")
    check_spread(spread, record_property, median_drop=WITHIN_MEDIAN_DROP, worst_drop=WITHIN_WORST_DROP)


def test_disco_within_penalty_applies_without_a_cross_penalty(sweep):
    """lam=0 with within_lam>0: the own blocks are still penalised (and the report says so)."""
    model, data, _ = sweep.digits(SEEDS[0])
    r = disco_train(trained_net(model), 2, (data.x_train, data.y_train), example_input=torch.zeros(1, 1, 8, 8),
                    output_names=("logits",), budget=0.5, lam=0.0, within_lam=1.0, within_keep=0.5, epochs=2,
                    finetune_epochs=1, seed=0)
    pen = [e for e in r.report.history if e.phase == "penalty"]
    assert pen and all(e.penalty > 0 for e in pen)
    assert all(kept == round(0.5 * total) for _, kept, total in r.report.kept_own)


@pytest.mark.parametrize("keep", [0.0, 1.5])
def test_disco_within_keep_out_of_range_is_a_clear_error(keep):
    from edgepart.errors import PlanningError

    with pytest.raises(PlanningError, match="within_keep"):
        disco_train(object(), 2, (np.zeros((1, 1)), np.zeros(1)), example_input=None, within_keep=keep)


def test_disco_without_torch_names_the_extra(monkeypatch):
    import sys

    from edgepart.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(MissingExtraError, match=r"edgepart\[models\]"):
        disco_train(object(), 2, (np.zeros((1, 1)), np.zeros(1)), example_input=None)


# -- a residual stream: one partition for every tensor added together ---------------------------------------

def residual_model(seed: int = 0) -> onnx.ModelProto:
    """conv8 -> relu -> conv8 -> add(first conv) -> relu -> conv8 -> add(stream) -> GAP -> flatten -> fc4."""
    rng = np.random.default_rng(seed)

    def conv(name, x, y, cin, cout):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32), f"{name}.w"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b"))
        return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[1, 1, 1, 1])

    inits: list = []
    nodes = [conv("a", "x", "a", 3, 8), helper.make_node("Relu", ["a"], ["ar"]),
             conv("b", "ar", "b", 8, 8), helper.make_node("Add", ["a", "b"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["s1r"]), conv("c", "s1r", "c", 8, 8),
             helper.make_node("Add", ["s1", "c"], ["s2"]), helper.make_node("GlobalAveragePool", ["s2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1)]
    inits += [numpy_helper.from_array(rng.normal(0, 0.4, (4, 8)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(4, np.float32), "fc.b")]
    g = helper.make_graph(nodes, "residual",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("seed", SEEDS)
def test_residual_stream_shares_one_partition(seed, tmp_path):
    model = residual_model(seed)
    x = np.random.default_rng(seed + 1).normal(size=(256, 3, 6, 6)).astype(np.float32)
    r = repurpose(model, {"x": x}, 2, 0.3, seed=seed)
    assert np.array_equal(r.partition["a"], r.partition["b"]) and np.array_equal(r.partition["a"], r.partition["c"])
    assert r.report.used_bytes <= 0.3 * r.report.dense_bytes
    graph = analyse(r.model, {"x": (1, 3, 6, 6)})
    res = package_channel(r.model, graph, cluster(2), tmp_path / "dist", partition=r.partition)
    assert not res.report.notes
    got = LocalCluster.from_dist(tmp_path / "dist", threads=env_threads()).run({"x": x[:32]})["logits"]
    assert np.max(np.abs(got - logits(r.model, x[:32]))) <= ATOL
    assert res.report.layers.used_bytes == r.report.used_bytes
