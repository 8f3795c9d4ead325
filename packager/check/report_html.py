"""A PackageReport as one self-contained HTML file: tables, and plots embedded as base64 PNG.

No script and no external file: CSS is inline, every name is escaped, and matplotlib draws on its
Agg canvas through `matplotlib.figure.Figure` (pyplot's global state is never touched).
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from pathlib import Path

from edgepart.errors import EdgepartError, MissingExtraError
from edgepart.plan import CALLER

from edgepart.packager.check.report import PackageReport, check_writable

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.1em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.15em .6em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:none;font-weight:normal;color:#555}tr.total td{font-weight:bold;border-top:1px solid #999}
img{max-width:100%;display:block;margin:.5em 0}.note{color:#555;font-size:.92em}code{background:#f4f4f4}
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def nbytes(n: float) -> str:
    """1,234,567 B (1.23 MB): exact figure first, then a readable one."""
    n = int(n)
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= k:
            return f"{n:,} B ({n / k:.3g} {unit})"
    return f"{n:,} B"


def ratio(x: float) -> str:
    return "∞ (nothing crosses)" if not math.isfinite(x) else f"{x:.2f}x"


def layer_ratio(dense: int, used: int) -> str:
    return "— (input not split)" if dense == 0 else ratio(dense / used if used else math.inf)


def num(x: float | None, fmt: str = ".3g") -> str:
    if x is None:
        return "—"
    return "∞" if not math.isfinite(x) else format(x, fmt)


def _table(head: list[str], rows: list[list[str]], numeric: set[int], attrs: list[str] | None = None,
           total: list[str] | None = None) -> str:
    th = "".join(f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>" for i, h in enumerate(head))
    out = [f"<table><thead><tr>{th}</tr></thead><tbody>"]
    for j, r in enumerate(rows + ([total] if total else [])):
        a = ' class="total"' if total and j == len(rows) else (f" {attrs[j]}" if attrs else "")
        out.append(f"<tr{a}>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                       for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------------------------------

def _figure(w: float, h: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtraError.for_extra("packager", "The report's plots", e.name or "matplotlib") from None

    return Figure(figsize=(w, h))


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    fig.tight_layout()
    return f'<img alt="{esc(alt)}" src="{png_data_uri(fig)}">'


def plot_layers(rep: PackageReport) -> str:
    """(a) bytes per split layer (or cut), dense vs used, one horizontal bar pair per row."""
    rows = rep.layers
    if not rows:
        return ""
    n = len(rows)
    fig = _figure(10, max(2.6, 0.2 * n + 1.4))
    ax = fig.add_subplot()
    y = np.arange(n)
    dense = np.array([r.dense_bytes for r in rows], float)
    used = np.array([r.used_bytes for r in rows], float)
    pos = np.concatenate([dense, used])
    pos = pos[pos > 0]
    log = pos.size > 0 and pos.max() / pos.min() > 30  # spans orders of magnitude: a linear axis hides the small
    if rep.rows_are == "cuts":
        ax.barh(y, used, color="#4477aa", label="bytes crossing the cut")
    else:
        ax.barh(y, dense, color="#cccccc", label="dense channel split")
        ax.barh(y, used, height=0.5, color="#4477aa", label="used (sent)")
        if n <= 120:
            for i, r in enumerate(rows):
                if r.used_bytes and r.used_bytes < r.dense_bytes:
                    ax.text(r.dense_bytes, i, f" {r.ratio:.1f}x", va="center", fontsize=7, color="#555")
    labels = [f"{i}  {r.name[-32:]}" if rep.rows_are != "cuts" else f"stage{i} → stage{i + 1}" for i, r in enumerate(rows)]
    ax.set_yticks(y, labels, fontsize=7 if n > 25 else 9)
    ax.invert_yaxis()
    ax.set_ylim(n - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"bytes per inference{' (log axis)' if log else ''}")
    what = "cut" if rep.rows_are == "cuts" else "split layer (input crossing devices)"
    total = f"{rep.used_bytes:,} B in all" if rep.rows_are == "cuts" else \
        f"dense {rep.dense_bytes:,} B, used {rep.used_bytes:,} B: {ratio(rep.ratio)}"
    ax.set_title(f"bytes per {what}\n{total}", fontsize=10, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _img(fig, "bytes per layer, dense vs used")


def _unit(values: np.ndarray, units: tuple[tuple[str, float], ...]) -> tuple[str, float]:
    top = float(values.max()) if values.size else 0.0
    return next(((u, k) for u, k in units if top >= k), units[-1])


def plot_devices(rep: PackageReport) -> str:
    """(b) compute and parameter bytes per device, against an equal share of the whole model."""
    rows = rep.device_rows
    if not rows:
        return ""
    fig = _figure(10, max(2.4, 0.35 * len(rows) + 1.4))
    names = [r.device for r in rows]
    y = np.arange(len(rows))
    share = 1 / len(rows)
    for i, (vals, total, what, units) in enumerate((
            (np.array([r.macs for r in rows], float), rep.model_macs, "compute (MACs per inference)",
             (("GMAC", 1e9), ("MMAC", 1e6), ("kMAC", 1e3), ("MAC", 1.0))),
            (np.array([r.param_bytes for r in rows], float), rep.model_param_bytes, "parameter bytes held",
             (("MiB", 2.0 ** 20), ("KiB", 1024.0), ("B", 1.0))))):
        ax = fig.add_subplot(1, 2, i + 1)
        u, k = _unit(np.append(vals, total * share), units)
        ax.barh(y, vals / k, color="#4477aa" if i == 0 else "#66aa55")
        ax.axvline(total * share / k, color="#aa3333", ls="--", lw=1, label=f"1/{len(rows)} of the model")
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(u)
        ax.set_title(what, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
    return _img(fig, "compute and parameter bytes per device")


def plot_fidelity(rep: PackageReport) -> str:
    """(c) output error per sample (or per output for one sample), and RePurpose's per-layer errors."""
    f = rep.fidelity
    errs = [r for r in rep.layers if r.error is not None]
    if f is None and not errs:
        return ""
    panels = (f is not None) + bool(errs)
    fig = _figure(10 if panels == 2 or (f is not None and f.samples > 1) else 5.5, 3.4)
    i = 1
    floor = 1e-12  # a log axis has no zero: an exact result is drawn at the floor
    if f is not None:
        ax = fig.add_subplot(1, panels, i)
        i += 1
        if f.samples > 1 and f.rel_errors:
            e = np.sort(np.maximum(np.array(f.rel_errors), floor))[::-1]
            ax.bar(np.arange(len(e)), e, width=1.0, color="#4477aa")
            ax.axhline(max(f.mean_rel_error, floor), color="#aa3333", ls="--", lw=1,
                       label=f"mean {f.mean_rel_error:.3g}")
            ax.set_xlabel(f"sample, worst first ({f.samples})")
            ax.set_ylabel("||split − original|| / ||original||")
            top1 = f"; top-1 agreement {f.top1_agreement:.1%}" if f.top1_agreement is not None else ""
            ax.set_title(f"relative output error per sample{top1}", fontsize=10)
            ax.legend(fontsize=8)
        else:
            d = np.maximum([o.max_abs_diff for o in f.outputs], floor)
            ax.bar(range(len(d)), d, width=0.5, color="#4477aa")
            for j, v in enumerate(d):
                ax.text(j, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
            ax.set_xlim(-0.75, len(d) - 0.25)
            ax.set_xticks(range(len(d)), [o.name[-20:] for o in f.outputs], fontsize=8)
            ax.set_ylabel("max |split − original|")
            ax.set_title("largest absolute difference per output", fontsize=10)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    if errs:
        ax = fig.add_subplot(1, panels, i)
        x = np.arange(len(errs))
        ax.bar(x - 0.2, [max(r.error_pruned or 0.0, floor) for r in errs], 0.4, color="#cccccc", label="after pruning")
        ax.bar(x + 0.2, [max(r.error, floor) for r in errs], 0.4, color="#4477aa", label="after the refit")
        ax.set_yscale("log")
        ax.set_xticks(x, [str(j) for j in range(len(errs))] if len(errs) > 12 else [r.name[-14:] for r in errs],
                      fontsize=7, rotation=0 if len(errs) > 12 else 30)
        ax.set_xlabel("split layer")
        ax.set_ylabel("relative layer output error")
        ax.set_title("RePurpose, per layer (calibration inputs)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _img(fig, "fidelity")


# -- sections -------------------------------------------------------------------------------------------

def _summary(rep: PackageReport) -> str:
    kv: list[tuple[str, str]] = [
        ("model", esc(rep.model)), ("strategy", esc(rep.strategy)),
        ("devices", f"{len(rep.devices)}: " + esc(", ".join(rep.devices))), ("plan id", f"<code>{esc(rep.plan_id)}</code>"),
        ("bytes between devices per inference (all routes)", nbytes(rep.cross_device_bytes)),
    ]
    if rep.rows_are == "cuts":
        kv.append(("bytes crossing the cuts", nbytes(rep.used_bytes)))
    else:
        kv += [
            ("split layers: dense channel split", nbytes(rep.dense_bytes)),
            ("split layers: used (sent)", nbytes(rep.used_bytes)),
            ("split layers: dense / used", f"<b>{ratio(rep.ratio)}</b>"),
            ("all routes if every split layer went dense", f"{nbytes(rep.dense_route_bytes)}; "
             f"{ratio(rep.dense_route_bytes / rep.cross_device_bytes if rep.cross_device_bytes else math.inf)} "
             f"of what is sent"),
        ]
    kv += [("bytes between the caller and the devices", nbytes(rep.caller_bytes)),
           ("estimated latency (cluster.yaml speeds and links)", f"{rep.latency_ms:.3f} ms")]
    r = dict(rep.restructured)
    if r:
        kv.append(("restructured", esc(", ".join(f"{k} {v}" for k, v in r.items()))))
    f = rep.fidelity
    if f is not None:
        head = f"max abs diff {num(f.max_abs_diff)}, mean relative error {num(f.mean_rel_error)}"
        if f.top1_agreement is not None:
            head += f", top-1 agreement {f.top1_agreement:.1%}"
        kv.append(("fidelity", f"<b>{head}</b> on {esc(f.inputs)}"))
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in kv) + "</table>"


def _layers(rep: PackageReport) -> str:
    if not rep.layers:
        return "<p>Nothing crosses between devices.</p>" if rep.rows_are == "cuts" else \
            "<p>No layer is split (no Conv/Gemm/MatMul with constant weights whose input is split).</p>"
    if rep.rows_are == "cuts":
        head = ["#", "cut", "tensors crossing", "bytes"]
        rows = [[str(i), esc(x.name), esc(x.tensor), f"{x.used_bytes:,}"] for i, x in enumerate(rep.layers)]
        total = ["", "total", "", f"{rep.used_bytes:,}"]
        numeric = {0, 3}
    else:
        sparse = any(x.error is not None for x in rep.layers)
        head = ["#", "layer", "input", "dense B", "used B", "dense / used"] + \
               (["rel. error after pruning", "rel. error after refit"] if sparse else [])
        rows = [[str(i), esc(x.name), esc(x.tensor), f"{x.dense_bytes:,}", f"{x.used_bytes:,}",
                 layer_ratio(x.dense_bytes, x.used_bytes)]
                + ([num(x.error_pruned, ".4f"), num(x.error, ".4f")] if sparse else [])
                for i, x in enumerate(rep.layers)]
        total = ["", "total", "", f"{rep.dense_bytes:,}", f"{rep.used_bytes:,}", ratio(rep.ratio)] + \
                (["", ""] if sparse else [])
        numeric = {0, 3, 4, 5, 6, 7}
    attrs = [f'data-layer="{esc(x.name)}" data-dense="{x.dense_bytes}" data-used="{x.used_bytes}"' for x in rep.layers]
    return _table(head, rows, numeric, attrs, total)


def _devices(rep: PackageReport) -> str:
    n = len(rep.device_rows) or 1
    rows = [[esc(r.device), f"{r.macs:,}", f"{r.macs / rep.model_macs:.1%}" if rep.model_macs else "—",
             f"{r.param_bytes:,}", f"{r.param_bytes / rep.model_param_bytes:.1%}" if rep.model_param_bytes else "—",
             str(r.steps), f"{r.compute_ms:.3f}"] for r in rep.device_rows]
    total = ["whole model", f"{rep.model_macs:,}", f"(1/{n} = {1 / n:.1%})", f"{rep.model_param_bytes:,}", "", "", ""]
    attrs = [f'data-device="{esc(r.device)}" data-macs="{r.macs}" data-params="{r.param_bytes}"'
             for r in rep.device_rows]
    return _table(["device", "MACs", "of model", "parameter B", "of model", "steps", "est. compute ms"],
                  rows, {1, 2, 3, 4, 5, 6}, attrs, total)


def _fidelity(rep: PackageReport) -> str:
    f = rep.fidelity
    if f is None:
        return "<p>Not measured.</p>"
    out = [f"<p>The bundles run chained in one process (<code>LocalCluster</code>, what the devices compute) against "
           f"the original model in onnxruntime, on {esc(f.inputs)}.</p>"]
    rows = [[esc(o.name), num(o.max_abs_diff), num(o.mean_rel_error),
             "—" if o.top1_agreement is None else f"{o.top1_agreement:.1%}"] for o in f.outputs]
    out.append(_table(["output", "max abs diff", "mean relative error", "top-1 agreement"], rows, {1, 2, 3},
                      [f'data-output="{esc(o.name)}"' for o in f.outputs]))
    if f.exact_max_abs_diff is not None:
        out.append(f"<p class=\"note\">The split against the restructured model it was compiled from: max abs diff "
                   f"{num(f.exact_max_abs_diff)} (the compiler is exact; the error above is the restructuring's).</p>")
    return "\n".join(out)


def _decisions(rep: PackageReport) -> str:
    rows = [[esc(n), esc(op), esc(k), esc(d), esc(note)] for n, op, k, d, note in rep.decisions
            if k != "contract" or note]  # plain split layers have their own table
    if not rows:
        return ""
    return "<h2>Decisions (ops not split per channel)</h2>\n" + _table(["node", "op", "decision", "device", "why"], rows, set())


def _routes(rep: PackageReport) -> str:
    rows = [["caller" if r.src == CALLER else esc(r.src), "caller" if r.dst == CALLER else esc(r.dst), esc(r.tensor),
             "—" if r.channels is None else str(r.channels), f"{r.size_bytes:,}", esc(r.codec)] for r in rep.routes]
    t = _table(["from", "to", "tensor", "channels", "bytes", "codec"], rows, {3, 4})
    return (f"<details{' open' if len(rows) <= 40 else ''}><summary>{len(rows)} routes (bytes per inference at the "
            f"planning shapes, before the codec)</summary>\n{t}\n</details>")


def render(rep: PackageReport) -> str:
    what = "bytes per cut" if rep.rows_are == "cuts" else "bytes per split layer"
    notes = "".join(f"<li>{esc(n)}</li>" for n in rep.notes)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgepart report: {esc(rep.model)} ({esc(rep.strategy)})</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>edgepart package report: {esc(rep.model)}</h1>",
        f'<p class="sub">{esc(rep.strategy)} split on {len(rep.devices)} devices, plan {esc(rep.plan_id)}. '
        f"All figures per inference at the planning shapes. How to read it: docs/report.md.</p>",
        "<h2>Summary</h2>", _summary(rep),
        f"<h2>{what}</h2>", plot_layers(rep), _layers(rep),
        "<h2>Devices</h2>", plot_devices(rep), _devices(rep),
        "<h2>Fidelity</h2>", plot_fidelity(rep), _fidelity(rep),
        _decisions(rep),
        "<h2>Routes</h2>", _routes(rep),
        f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_html(rep: PackageReport, path: Path | str) -> Path:
    """Write the report as one self-contained HTML file (tables and embedded PNG plots)."""
    path = Path(path)
    check_writable(path)
    text = render(rep)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise EdgepartError(f"Cannot write the report to {path} ({e.strerror or e}). "
                            f"Give a path in a folder you can write to with --report.") from None
    return path
