"""Comparison reports: a sweep's MLflow runs -> tables (CSV, Markdown, HTML) and plots (PNG).

Entry points: ``reports.build.build_report``, and ``reports.cli`` (``add_report_arguments``,
``run_report``) for ``harness report``. The names the runs are read by (tags, metrics, the store's
URI) are the writer's: ``harness.contract``. Kept import-free.
"""
