"""Every bad input to the CLI: a non-zero exit code, one paragraph that says what went wrong and
what to do, and never a Python traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cli_helpers import assert_clean_error, invoke

from edgepart.bundle import is_bundle

pytestmark = pytest.mark.timeout(120)

EXE = Path(sys.executable).parent / "edgepart"  # the console script of the interpreter running the tests


# -- the model file -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    out = {
        "random bytes": d / "random.onnx",
        "empty": d / "empty.onnx",
        "text": d / "notes.onnx",
    }
    out["random bytes"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["empty"].write_bytes(b"")
    out["text"].write_text("This is a README, not a model.\n" * 40)
    return out


@pytest.mark.parametrize("kind", ["random bytes", "empty", "text"])
@pytest.mark.parametrize("command", ["plan", "package"])
def test_not_onnx(bad_models, files, tmp_path, kind, command):
    args = [command, bad_models[kind], "-c", files / "cluster3.yaml"]
    if command == "package":
        args += ["-o", tmp_path / "dist"]
    err = assert_clean_error(invoke(*args), bad_models[kind].name, "torch.onnx.export")
    assert ("not a readable ONNX model" in err) or ("is empty" in err) or ("not an ONNX model" in err)
    assert not (tmp_path / "dist").exists()


def test_model_that_does_not_exist(files, tmp_path):
    assert_clean_error(invoke("plan", tmp_path / "nope.onnx", "-c", files / "cluster3.yaml"),
                       "does not exist", "Give the path of an .onnx file")


def test_not_onnx_through_the_real_executable(bad_models, files):
    """The installed `edgepart` script (next to this interpreter), not only the in-process app."""
    assert EXE.is_file(), f"no console script at {EXE}"
    r = subprocess.run([str(EXE), "plan", str(bad_models["text"]), "-c", str(files / "cluster3.yaml")],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip().startswith("error:") and "notes.onnx" in r.stderr


# -- input shapes ------------------------------------------------------------------------------------------

def test_symbolic_input_without_shape(files):
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml"),
                       "symbolic input dimensions", "x [Nx4x6x6]", "--input-shape NAME=1x3x224x224", "--inputs")


def test_symbolic_input_with_shape_or_inputs(files, tmp_path):
    res = invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--input-shape", "x=2x4x6x6")
    assert res.exit_code == 0, res.output
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 4, 6, 6), np.float32))
    res = invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--inputs", tmp_path / "in.npz", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"]


def test_symbolic_input_message_keeps_bracketed_shape(files, tmp_path):
    m = onnx.load(str(files / "symbolic.onnx"))
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(m, str(tmp_path / "batch.onnx"))
    assert_clean_error(invoke("plan", tmp_path / "batch.onnx", "-c", files / "cluster3.yaml"), "x [batchx4x6x6]")


@pytest.mark.parametrize("text", ["x=1,4,6,6", "x", "=1x4x6x6", "x=1x0x6x6", "x=1xfour"])
def test_input_shape_syntax(files, text):
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--input-shape", text),
                       "is not of the form NAME=1x3x224x224")


def test_input_shape_unknown_name(files):
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--input-shape", "image=1x4x6x6"),
                       "names image", "Its inputs are: x")


def test_input_shape_wrong_rank_or_fixed_size(files):
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--input-shape", "x=1x4x6"),
                       "has 4 dimensions", "gives 3")
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--input-shape", "x=1x5x6x6"),
                       "fixed size 4 on axis 1")


def test_inputs_npz_that_is_not_one(files, tmp_path):
    (tmp_path / "in.npz").write_text("nope")
    assert_clean_error(invoke("plan", files / "symbolic.onnx", "-c", files / "cluster3.yaml", "--inputs", tmp_path / "in.npz"),
                       "is not a numpy .npz", "numpy.savez")


# -- the cluster -------------------------------------------------------------------------------------------------

def test_more_devices_than_cut_points(files):
    assert_clean_error(invoke("plan", files / "three_nodes.onnx", "-c", _cluster(files, 4)),
                       "4 devices", "only 3 compute node", "Use at most 3 devices")


def _cluster(files: Path, n: int, memory_mb=None) -> Path:
    p = files / f"c{n}-{memory_mb}.yaml"
    lines = ["devices:"] + [
        f"  - {{name: dev{i}, gflops: {i + 1}" + (f", memory_mb: {memory_mb[i]}" if memory_mb else "") + "}"
        for i in range(n)]
    p.write_text("\n".join(lines) + "\n")
    return p


def test_cluster_memory_too_small_in_all(files):
    """~3.1 MB of weights on 1 + 1.5 MB of devices."""
    err = assert_clean_error(invoke("plan", files / "big.onnx", "-c", _cluster(files, 2, [1, 1.5])),
                             "cannot hold the model", "MB missing", "memory_mb")
    assert "needs about 3.1 MB" in err


def test_cluster_memory_too_small_for_one_node(files):
    """mlp_up's 1 MB weight alone does not fit the largest device."""
    err = assert_clean_error(invoke("plan", files / "big.onnx", "-c", _cluster(files, 3, [0.9, 0.5, 0.8])),
                             "cannot hold the model", "'mlp_up'", "MB missing", "dev0")
    assert "Give dev0 more memory_mb" in err


@pytest.mark.parametrize("yaml_text, needles", [
    ("devices:\n  - {name: a, gflops: 2, memroy_mb: 10}\n", ["unknown key(s) memroy_mb", "allowed:", "memory_mb"]),
    ("devices:\n  - {name: a, gflops: 2}\nlink:\n  default: {bandwidth_mbps: 5}\n", ["unknown key(s) link"]),
    ("devices:\n  - {name: a, gflops: 2}\nlinks:\n  default: {bandwith_mbps: 5}\n", ["links.default needs 'bandwidth_mbps'"]),
    ("devices:\n  - {name: a, memory_mb: 10}\n", ["devices[0] (a) needs 'gflops'", "'speed'"]),
    ("devices:\n  - {name: a, gflops: 1}\n  - {name: a, gflops: 2}\n", ["device names must be unique", "repeated: a"]),
    ("devices:\n  - {name: a, gflops: fast}\n", ["gflops must be a positive number", "'fast'"]),
    ("devices:\n  - {name: a, gflops: 1, speed: 2}\n", ["gives both 'gflops' and 'speed'"]),
    ("devices: []\n", ["'devices' must be a non-empty list"]),
    ("- a\n- b\n", ["expected a mapping with 'devices' and 'links'"]),
    ("", ["expected a mapping with 'devices' and 'links'"]),
    pytest.param("devices: [\n", ["is not valid YAML", "line 2"]),
    ("devices: 3\n", ["'devices' must be a non-empty list"]),
    ("devices:\n  - {name: a, gflops: 1}\nlinks:\n  pairs:\n    - {between: [a, zz], bandwidth_mbps: 5}\n",
     ["names 'zz', which is not a device"]),
])
def test_malformed_cluster_yaml(files, tmp_path, yaml_text, needles):
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml_text)
    err = assert_clean_error(invoke("plan", files / "residual.onnx", "-c", p), *needles)
    assert "cluster.yaml" in err


def test_cluster_file_missing(files, tmp_path):
    assert_clean_error(invoke("plan", files / "residual.onnx", "-c", tmp_path / "nope.yaml"),
                       "does not exist", "docs/cluster.md")


def test_unknown_objective(files):
    assert_clean_error(invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--objective", "speed"),
                       "Unknown objective 'speed'", "latency, throughput")


# -- bundles ----------------------------------------------------------------------------------------------------

@pytest.fixture
def dist(packaged, tmp_path) -> Path:
    d = tmp_path / "dist"
    shutil.copytree(packaged, d)
    return d


def _device_with_file(dist: Path) -> tuple[Path, Path]:
    for b in sorted(dist.iterdir()):
        for f in sorted(b.glob("*.onnx")):
            return b, f
    raise AssertionError("no sub-model")


def test_modified_sub_model(dist, files):
    bundle, f = _device_with_file(dist)
    f.write_bytes(f.read_bytes() + b"\0")
    for args in (["inspect", bundle], ["verify", dist, "-m", files / "residual.onnx"], ["run", bundle]):
        assert_clean_error(invoke(*args), f.name, "was modified", "Copy the bundle again")


def test_missing_sub_model(dist, files):
    bundle, f = _device_with_file(dist)
    f.unlink()
    assert_clean_error(invoke("inspect", bundle), f"missing {f.name}", "Copy the whole bundle folder again")


@pytest.mark.parametrize("older, needle", [(True, "package the model again"), (False, "upgrade edgepart")])
def test_other_schema(dist, files, older, needle):
    from edgepart.plan import READS, SCHEMA_VERSION

    # A version this edgepart does not read: older than the oldest it reads, or newer than its own.
    version = min(READS) - 1 if older else SCHEMA_VERSION + 1
    for b in filter(is_bundle, dist.iterdir()):
        m = json.loads((b / "manifest.json").read_text())
        m["schema_version"] = version
        (b / "manifest.json").write_text(json.dumps(m))
    bundle = sorted(filter(is_bundle, dist.iterdir()))[0]
    other = "upgrade" if older else "package the model again"
    for args in (["inspect", bundle], ["verify", dist, "-m", files / "residual.onnx"]):
        err = assert_clean_error(invoke(*args), f"schema version {version}", needle)
        assert other not in err


def test_edited_manifest(dist):
    from edgepart.signing import load_or_create_signing_key, sign_manifest

    bundle = sorted(filter(is_bundle, dist.iterdir()))[0]
    m = json.loads((bundle / "manifest.json").read_text())
    m["plan"]["objective"] = "latency" if m["plan"]["objective"] != "latency" else "throughput"
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert_clean_error(invoke("inspect", bundle), "modified after signing")
    # signed again (by someone holding the workstation's key): the plan no longer hashes to its id
    (bundle / "manifest.json").write_text(json.dumps(sign_manifest(m, load_or_create_signing_key())))
    assert_clean_error(invoke("inspect", bundle), "the manifest was edited")


def test_inspect_of_dist_folder_names_the_bundles(dist):
    names = ", ".join(sorted(p.name for p in dist.iterdir() if is_bundle(p)))
    assert_clean_error(invoke("inspect", dist), "not an edgepart bundle", names, "name one of them")


def test_verify_of_one_bundle_asks_for_the_parent(dist, files):
    bundle = sorted(filter(is_bundle, dist.iterdir()))[0]
    assert_clean_error(invoke("verify", bundle, "-m", files / "residual.onnx"), "one device's bundle", "parent")


def test_verify_against_another_model(dist, files):
    assert_clean_error(invoke("verify", dist, "-m", files / "symbolic.onnx"), "not from this model")


def test_verify_inputs_that_do_not_match(dist, files, tmp_path):
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 4, 8, 8), np.float32))
    assert_clean_error(invoke("verify", dist, "-m", files / "residual.onnx", "--inputs", tmp_path / "in.npz"),
                       "do not match the model", "unknown image", "missing x")
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 4, 8, 8), np.float64))
    assert_clean_error(invoke("verify", dist, "-m", files / "residual.onnx", "--inputs", tmp_path / "in.npz"),
                       "is float64", ".astype('float32')")


def test_package_into_a_folder_with_other_things(files, tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"\xff\xd8")
    assert_clean_error(invoke("package", files / "residual.onnx", "-c", files / "cluster3.yaml", "-o", out),
                       "photo.jpg", "Give an empty or new folder with -o")


# -- verify with a tolerance smaller than the difference ------------------------------------------------------------

def test_verify_atol_too_small(dist, files, tmp_path):
    """A model differing from the packaged one by a hair: within the default atol, not within a tiny one."""
    m = onnx.load(str(files / "residual.onnx"))
    b0 = next(i for i in m.graph.initializer if i.name == "B0")
    arr = onnx.numpy_helper.to_array(b0) * np.float32(1 + 1e-6)
    b0.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), "B0"))
    onnx.save(m, str(tmp_path / "nudged.onnx"))

    res = invoke("verify", dist, "-m", tmp_path / "nudged.onnx", "--json")
    assert res.exit_code == 0, res.output
    diff = json.loads(res.stdout)["outputs"]["y"]["max_abs_diff"]
    assert 0 < diff <= 1e-5

    res = invoke("verify", dist, "-m", tmp_path / "nudged.onnx", "--atol", f"{diff / 10:g}")
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stdout.splitlines() if "DIFFERS" in ln]
    assert len(lines) == 1 and " y " in lines[0]
    assert "the split differs from the model" in res.stdout
    assert "not byte-identical" in res.stdout

    res = invoke("verify", dist, "-m", tmp_path / "nudged.onnx", "--atol", f"{diff / 10:g}", "--json")
    assert res.exit_code == 1
    v = json.loads(res.stdout)
    assert v["ok"] is False and v["model_matches_plan"] is False


@pytest.fixture(scope="module")
def without_onnx(files) -> subprocess.CompletedProcess:
    """`edgepart plan` in a process where onnx cannot be imported, as on a device (`pip install edgepart`)."""
    code = ("import sys; sys.modules['onnx'] = None\n"  # what Python does for a module that is not there
            "from edgepart.cli import main\n"
            f"sys.argv = ['edgepart', 'plan', {str(files / 'residual.onnx')!r}, '-c', {str(files / 'cluster3.yaml')!r}]\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)


def test_missing_packager_extra_is_reported(without_onnx):
    r = without_onnx
    assert r.returncode == 3
    assert "Traceback" not in r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert err.startswith("error:") and "needs the 'packager' extra" in err and "'onnx' is not installed" in err


def test_missing_packager_extra_names_the_pip_command(without_onnx):
    assert 'pip install "edgepart[packager]"' in " ".join(without_onnx.stderr.split())


def test_python_dash_m_edgepart(files):
    r = subprocess.run([sys.executable, "-m", "edgepart", "plan", str(files / "residual.onnx"), "-c",
                        str(files / "cluster3.yaml"), "--json"], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]


@pytest.mark.parametrize("command", ["plan", "package"])
def test_unknown_strategy(files, tmp_path, command):
    extra = ["-o", str(tmp_path / "dist")] if command == "package" else []
    res = invoke(command, files / "residual.onnx", "-c", files / "cluster3.yaml", "--strategy", "tiles", *extra)
    assert_clean_error(res, "tiles", "pipeline", "channel")


def test_plan_channel_with_plot_says_what_to_use(files, tmp_path):
    res = invoke("plan", files / "residual.onnx", "-c", files / "cluster3.yaml", "--strategy", "channel",
                 "--plot", tmp_path / "p.png")
    assert_clean_error(res, "--report")
