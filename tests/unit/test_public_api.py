"""The public API is pinned: what `edgepart.__all__` lists, and that the device side stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgepart

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]

# Changing this list is an API change: say so in the changelog when you edit it.
PUBLIC = [
    "Agent",
    "Bundle",
    "BundleError",
    "ClusterError",
    "Codec",
    "ConversionError",
    "DeadlineExceeded",
    "DeadlineRefused",
    "EdgepartError",
    "InferenceSession",
    "InputShapeError",
    "InputsError",
    "MissingExtraError",
    "ModelError",
    "PeerError",
    "Plan",
    "PlanningError",
    "ProviderError",
    "Route",
    "SourcesError",
    "Step",
    "TensorSpec",
    "WireError",
    "__version__",
    "load_bundle",
]

HEAVY = ("onnx", "scipy", "torch", "matplotlib", "yaml")  # the workstation's (packager extra), not a device's


def test_all_is_pinned():
    assert PUBLIC == sorted(PUBLIC)
    assert sorted(edgepart.__all__) == PUBLIC
    assert len(set(edgepart.__all__)) == len(edgepart.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_each_public_name_is_importable(name):
    assert getattr(edgepart, name) is not None
    ns: dict = {}
    exec(f"from edgepart import {name}", ns)
    assert ns[name] is getattr(edgepart, name)


def test_errors_form_one_tree():
    errors = [getattr(edgepart, n) for n in PUBLIC if n.endswith("Error") or n.startswith("Deadline")]
    for e in errors:
        assert issubclass(e, edgepart.EdgepartError)
    assert issubclass(edgepart.DeadlineExceeded, edgepart.PeerError)
    assert issubclass(edgepart.DeadlineExceeded, TimeoutError)
    assert issubclass(edgepart.DeadlineRefused, edgepart.DeadlineExceeded)
    assert issubclass(edgepart.MissingExtraError, ImportError)


def test_version_matches_the_distribution():
    from importlib.metadata import version

    assert edgepart.__version__ == version("edgepart")


def _heavy_after(code: str) -> list[str]:
    probe = (
        f"import sys\n{code}\n"
        f"import json\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_edgepart_and_the_agent_stays_light():
    """What a Jetson or a Pi imports must not pull the packager's dependencies."""
    assert _heavy_after("import edgepart\nimport edgepart.agent\nedgepart.Agent") == []


def _device_modules() -> list[str]:
    mods = []
    for folder, pkg in (("sdk", "edgepart"), ("agent", "edgepart.agent")):
        for f in sorted((REPO / folder).rglob("*.py")):
            if f.is_relative_to(REPO / "sdk" / "testing"):  # edgepart.testing: a checkout's harnesses, not in the wheel
                continue
            rel = f.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods.append(".".join([pkg, *parts]))
    return mods


def test_every_device_side_module_stays_light():
    """Every module under sdk/ and agent/, the CLI included: the packager is imported lazily."""
    mods = [m for m in _device_modules() if m != "edgepart.__main__"]
    assert "edgepart.cli" in mods and "edgepart.agent" in mods
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    assert _heavy_after(code) == []
