"""How a CPU cap slows a process: the wall time of a given amount of CPU work inside a CPU cgroup.

    .venv/bin/python bench/bench_cpucap.py                 # caps 0.1, 0.2, 0.5 of a core (about 40 s; needs root)
    .venv/bin/python bench/bench_cpucap.py --caps 0.1 --repeats 4

The benchmarks emulate slow devices with a CPU quota (edgepart.testing.cpucap). A quota does not make a
slower CPU: the process runs at the core's speed until the period's quota is spent, then waits for the
next period. This prints, per cap, the wall time of a busy loop of 0.5 to 40 ms of CPU started after a
pause (the median of --repeats, with the least and the most), against what a CPU that much slower
would take (CPU / cap) and what the quota model of the simulator says (edgepart.packager.sim.quota_ms,
docs/priority.md, "The simulator"). Writes bench/results/cpucap.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

WORK_MS = (0.5, 1, 2, 3, 5, 8, 12, 20, 40)

# the child: one core (the first it may use), CPU time by the thread's clock, a pause before each run so
# that each starts with the period's quota as a rested process finds it
_CHILD = r"""
import json, os, sys, time
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
work, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
def spin(ms):
    t0 = time.thread_time()
    while (time.thread_time() - t0) * 1e3 < ms:
        pass
out = {}
for ms in work:
    ws = []
    for _ in range(repeats):
        time.sleep(0.12)
        t = time.perf_counter()
        spin(ms)
        ws.append((time.perf_counter() - t) * 1e3)
    out[str(ms)] = sorted(ws)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--caps", default="0.1,0.2,0.5", help="shares of one core, comma-separated")
    ap.add_argument("--repeats", type=int, default=7, help="runs per amount of work")
    a = ap.parse_args()
    from edgepart.packager.sim import quota_ms
    from edgepart.testing.cpucap import CpuCap, CgroupError, quota_of

    console = Console(width=140)
    caps = [float(c) for c in a.caps.split(",") if c.strip()]
    results: dict = {}
    for cap in caps:
        try:
            cg = CpuCap.create("probe", cap)
        except CgroupError as e:
            raise SystemExit(f"cannot cap a process here: {e}")
        try:
            res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(WORK_MS), str(a.repeats)],
                                 capture_output=True, text=True, timeout=600, preexec_fn=cg.enter)
        finally:
            cg.remove()
        if res.returncode != 0:
            raise SystemExit(f"the capped process failed:\n{res.stderr[-2000:]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        quota, period = quota_of(cap)
        share, period_ms = quota / period, period / 1000
        t = Table(title=f"cap {cap:g} of a core: {quota / 1000:g} ms every {period_ms:g} ms", title_justify="left")
        for c in ("CPU ms", "wall ms (median)", "least", "most", "a CPU cap times slower", "quota model"):
            t.add_column(c, justify="right")
        rows = []
        for ms in WORK_MS:
            ws = got[str(ms)]
            med = ws[len(ws) // 2]
            # the model: work at the device's sustained speed is ms / share, started at a period's start
            model = quota_ms(0.0, ms / share, period_ms, share, [-1, 0.0])
            rows.append({"cpu_ms": ms, "wall_ms": med, "least_ms": ws[0], "most_ms": ws[-1],
                         "even_ms": ms / share, "quota_model_ms": model})
            t.add_row(f"{ms:g}", f"{med:.1f}", f"{ws[0]:.1f}", f"{ws[-1]:.1f}", f"{ms / share:.1f}", f"{model:.1f}")
        console.print(t)
        results[str(cap)] = {"quota_us": quota, "period_us": period, "rows": rows}
    path = save("cpucap", {"args": vars(a), "caps": results})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
