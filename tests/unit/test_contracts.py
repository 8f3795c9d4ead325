"""The layer contracts hold, and no import cycle exists anywhere in edgepart (docs/architecture.md,
"What may import what").

The contracts live in the repo's `.importlinter` and are checked with import-linter: the agent never
imports the packager; the core (wire, plan, runtime, codecs, errors, bundle) imports neither; the app's
side and the device's side of the agent package never import each other; only the demo command imports
`edgepart.testing`; no cycle between siblings. Cycles between *any* two modules
(a package and its own modules too, imports inside functions included) are found here with grimp, the
graph library import-linter is built on: strongly connected components of the module graph.

`edgepart` is three folders (sdk/, agent/, packager/) mapped onto one package by pyproject's
package-dir, which import-linter cannot follow in a checkout; so each check assembles them into one
tree in a temporary folder, as the wheel does, and runs in a subprocess that imports `edgepart` from
there. The last tests add a violation to such a copy and show that the same checks report it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"
ROOT = "edgepart"


def _package_dirs() -> dict[str, str]:
    """pyproject's package-dir: import name -> folder."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return {"edgepart": "sdk", "edgepart.agent": "agent", "edgepart.packager": "packager"}
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def assemble(dest: Path) -> Path:
    """The import package `edgepart` as one tree under dest (dest/edgepart/agent/... ), as installed.
    sdk/testing/ comes along: it is not shipped, but it is part of the graph the contracts speak of."""
    for name, folder in sorted(_package_dirs().items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(REPO / folder, dest.joinpath(*name.split(".")), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _python(tree: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports `edgepart` from `tree` (not the editable install)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(tree), COLUMNS="200", NO_COLOR="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=240)


def lint_imports(tree: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    """import-linter on `config`, over the edgepart of `tree`: its exit code and report."""
    try:
        import importlinter  # noqa: F401
    except ModuleNotFoundError:
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))\n")
    return _python(tree, code, str(config))


# -- cycles between any two modules -------------------------------------------------------------------


def strongly_connected(succ: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative) of the graph `succ`, keeping those that hold a
    cycle: two modules or more, or one that imports itself. Each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(succ):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(succ[root])))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in succ.get(v, ()):
                        out.append(sorted(comp))
    return sorted(out)


def shortest_cycle(succ: dict[str, set[str]], component: list[str]) -> list[str]:
    """One shortest cycle inside a component, as [a, b, ..., a] (breadth first from each module)."""
    members = set(component)
    best: list[str] | None = None
    for start in component:
        prev = {start: None}
        queue = deque([start])
        found = None
        while queue and found is None:
            v = queue.popleft()
            for w in sorted(succ.get(v, ())):
                if w == start:
                    found = v
                    break
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        if found is not None:
            path = [start]
            v = found
            while v is not None:
                path.append(v)
                v = prev[v]
            path = list(reversed(path))  # start, ..., found, start
            if best is None or len(path) < len(best):
                best = path
    assert best is not None
    return best


def import_cycles(graph) -> list[dict]:
    """Every cycle of imports in a grimp graph: for each strongly connected component, its modules, one
    shortest cycle through it, and the import lines that make that cycle."""
    succ = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    out = []
    for comp in strongly_connected(succ):
        cycle = shortest_cycle(succ, comp)
        lines = []
        for a, b in zip(cycle, cycle[1:]):
            d = graph.get_import_details(importer=a, imported=b)
            lines.append(f"{a}:{d[0]['line_number']}  {d[0]['line_contents']}" if d else f"{a} -> {b}")
        out.append({"modules": comp, "cycle": cycle, "lines": lines})
    return out


def find_cycles(tree: Path) -> list[dict]:
    """import_cycles of the edgepart in `tree`, run where that edgepart is the one imported. Every import
    counts: at module level, inside functions (the lazy ones), under TYPE_CHECKING."""
    code = textwrap.dedent(f"""
        import importlib.util, json, sys
        import grimp
        spec = importlib.util.spec_from_file_location("_contracts", {str(Path(__file__))!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        graph = grimp.build_graph({ROOT!r}, cache_dir=None)
        assert {ROOT + ".agent"!r} in graph.modules, "edgepart.agent is not in the graph"
        print(json.dumps(mod.import_cycles(graph)))
    """)
    r = _python(tree, code)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def describe(cycles: list[dict]) -> str:
    parts = []
    for c in cycles:
        parts.append(f"cycle among {len(c['modules'])} modules: {', '.join(c['modules'])}\n"
                     f"  shortest: {' -> '.join(c['cycle'])}\n" + "".join(f"    {ln}\n" for ln in c["lines"]))
    return "".join(parts)


# -- the repository ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return assemble(tmp_path_factory.mktemp("assembled"))


def test_the_assembled_tree_is_edgepart_as_installed(tree):
    """The checks below see all three folders (a wrong mapping would make every contract vacuous)."""
    for rel in ("edgepart/__init__.py", "edgepart/agent/__init__.py", "edgepart/packager/__init__.py",
                "edgepart/testing/__init__.py", "edgepart/wire.py", "edgepart/plan.py"):
        assert (tree / rel).is_file(), rel


def test_layer_contracts_hold(tree):
    """The contracts of .importlinter, checked by import-linter over the whole of edgepart."""
    r = lint_imports(tree)
    assert r.returncode == 0, f"import-linter says:\n{r.stdout}\n{r.stderr}"
    assert "0 broken" in r.stdout, r.stdout


def test_no_import_cycle_anywhere_in_edgepart(tree):
    cycles = find_cycles(tree)
    assert not cycles, f"{len(cycles)} import cycle(s) in edgepart:\n{describe(cycles)}"


# -- the checks bite: a violation added to a copy is reported --------------------------------------


def _add(tree: Path, rel: str, text: str) -> None:
    f = tree / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    with f.open("a") as fh:
        fh.write("\n" + textwrap.dedent(text))


VIOLATIONS = {
    # an agent module that imports the packager, lazily inside a function
    "agent imports packager": (
        "edgepart/agent/_probe.py", "def f():\n    from edgepart.packager import cluster\n    return cluster\n",
        "The agent (on the device) never imports the packager", "edgepart.agent._probe -> edgepart.packager.cluster"),
    # the wire format reaching for the agent
    "wire imports agent": (
        "edgepart/wire.py", "def _probe():\n    import edgepart.agent.net.link\n",
        "The core (wire, plan, runtime, codecs, errors, bundle) imports neither", "edgepart.wire -> edgepart.agent.net.link"),
    # a device module using the test harness
    "agent imports testing": (
        "edgepart/agent/_probe.py", "from edgepart.testing import emulate\n",
        "edgepart.testing (harnesses, not in the wheel) is imported by nothing", "edgepart.agent._probe -> edgepart.testing.emulate"),
    # the app's client reaching into the device's agent (they meet through edgepart.agent.net only)
    "app imports device": (
        "edgepart/agent/app/_probe.py", "def f():\n    from edgepart.agent.device import core\n    return core\n",
        "The app's side (the client) and the device's side (the agent) never import each other",
        "edgepart.agent.app._probe -> edgepart.agent.device.core"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_a_broken_contract_is_reported(case, tmp_path):
    rel, text, contract, chain = VIOLATIONS[case]
    t = assemble(tmp_path)
    _add(t, rel, text)
    r = lint_imports(t)
    assert r.returncode != 0, r.stdout
    verdicts = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().endswith((" KEPT", " BROKEN"))]
    assert [v for v in verdicts if v.startswith(contract)] == [v for v in verdicts if v.startswith(contract) and v.endswith("BROKEN")] != [], r.stdout
    assert chain in r.stdout, r.stdout


def test_a_cycle_between_two_modules_is_reported(tmp_path):
    """Two sdk modules importing each other, one of them lazily inside a function: the cycle finder names
    both, and the acyclic_siblings contract of .importlinter is broken too."""
    t = assemble(tmp_path)
    _add(t, "edgepart/_probe_a.py", "from edgepart import _probe_b\n")
    _add(t, "edgepart/_probe_b.py", "def f():\n    from edgepart import _probe_a\n    return _probe_a\n")
    cycles = find_cycles(t)
    probe = [c for c in cycles if any("_probe" in m for m in c["modules"])]
    assert [c["modules"] for c in probe] == [["edgepart._probe_a", "edgepart._probe_b"]], describe(cycles)
    assert probe[0]["cycle"] in (["edgepart._probe_a", "edgepart._probe_b", "edgepart._probe_a"],
                                 ["edgepart._probe_b", "edgepart._probe_a", "edgepart._probe_b"])
    assert any("from edgepart import _probe_a" in ln for ln in probe[0]["lines"]), probe
    r = lint_imports(t)
    assert r.returncode != 0 and "No cycles are allowed in edgepart." in r.stdout, r.stdout


def test_a_cycle_between_a_package_and_its_module_is_reported(tmp_path):
    """What acyclic_siblings cannot see (a package is no sibling of its own modules), the finder does:
    an agent module importing the agent package that imports it."""
    t = assemble(tmp_path)
    _add(t, "edgepart/agent/_probe.py", "import edgepart.agent\n")
    _add(t, "edgepart/agent/__init__.py", "from . import _probe  # noqa\n")
    cycles = find_cycles(t)
    assert ["edgepart.agent", "edgepart.agent._probe"] in [c["modules"] for c in cycles], describe(cycles)


def test_the_cycle_finder_on_small_graphs():
    succ = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"g"}, "g": set()}
    assert strongly_connected(succ) == [["a", "b", "c"], ["e"]]
    assert shortest_cycle(succ, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert shortest_cycle({"x": {"y", "z"}, "y": {"x"}, "z": {"y"}}, ["x", "y", "z"]) == ["x", "y", "x"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
