"""Comparison reports: a sweep's MLflow runs -> tables (CSV, Markdown, HTML) and plots (PNG).

Entry points: ``reports.build.build_report`` (and ``add_report_arguments`` / ``run_report`` for the
CLI), ``reports.store.default_tracking_uri``. Kept import-free so that ``reports.store`` stays cheap.
"""
