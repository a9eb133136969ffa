"""Comparison reports: a sweep's MLflow runs -> tables (CSV, Markdown, HTML) and plots (PNG).

Entry points: ``reports.build.build_report`` (and ``add_report_arguments`` / ``run_report`` for the
CLI). The names the runs are read by (tags, metrics, the store's URI) are the writer's:
``harness.contract``. Kept import-free.
"""
