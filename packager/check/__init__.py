"""Checking what was packaged (docs/report.md).

    verify.py       run the bundles chained and compare with the original model (exact or not)
    report.py       the report of a package run: bytes, compute, parameters, fidelity (one value)
    report_html.py  the report as one self-contained HTML page
"""
