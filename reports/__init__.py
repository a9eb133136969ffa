"""Comparison reports: a sweep's MLflow runs -> tables (CSV, Markdown, HTML, LaTeX) and plots (PNG).

Entry points: ``reports.build.build_report``, and ``reports.cli`` (``add_report_arguments``,
``run_report``) for ``harness report``. The names the runs are read by (tags, metrics, the store's
URI) are the writer's: ``harness.contract``, the only module of ``harness`` imported here; the
config keys read are named once in ``reports.params``. Kept import-free.

The modules, in the order the data flows:
- ``runs``: find the sweep and its trial runs in MLflow, load metric histories;
- ``params``, ``methods``: read params; what tells the methods apart, their names and order;
- ``frame``: one row per trial (condition, method, seed, the value under each selection rule, ...);
- ``tables``, ``gains``, ``cost``: aggregates over seeds, paired gains over individual training, the
  cost per method; ``comparison``: all of them for one report;
- ``rows``, ``sections``, ``render``, ``plots``, ``latex``: what people read (cells, sections with
  their notes, Markdown and HTML, PNG figures, booktabs tables);
- ``build``: puts one report together and writes it; ``cli``: ``harness report``'s options.
"""
