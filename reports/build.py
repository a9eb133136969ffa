"""``harness report``: one sweep's MLflow runs -> tables (CSV, Markdown, HTML) and plots (PNG).

``build_report`` does the work; ``reports.cli`` is the command-line adapter.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness.contract import TEST_ACC, default_tracking_uri, sqlite_path
from reports import plots, render
from reports.comparison import Comparison, compare
from reports.frame import MODES
from reports.latex import write_latex
from reports.runs import HISTORY_KEYS, Sweep, load_histories, select_sweep
from reports.sections import report_header, report_sections

# The old name of mode "last" (the report said "final" where its labels said "last"); still accepted.
DEPRECATED_MODE = "final"
DEPRECATED_MODE_NOTE = "mode 'final' is deprecated and now called 'last' (the same epoch); use --mode last"


@dataclass
class ReportResult:
    """What ``build_report`` wrote and computed.

    ``files``: file name (``report.html``, ``accuracy.csv``, ``accuracy_vs_noise.png``, ...) -> path.
    ``tables``: ``accuracy``, ``selection``, ``gains``, ``calibration``, ``detection``, ``cost``,
    ``memorization``, ``kept``, ``collapsed``, ``failed`` as long-form DataFrames, exactly as written
    to the CSVs (columns documented where each is made: ``reports.tables``, ``reports.gains``,
    ``reports.cost``).
    """

    out_dir: Path
    files: dict[str, Path]
    tables: dict[str, pd.DataFrame]
    experiment: str
    sweep_name: str
    sweep_run_id: str | None
    logged_to_mlflow: bool
    notes: list[str] = field(default_factory=list)


def build_report(
    *,
    experiment: str | None = None,
    sweep_run_id: str | None = None,
    out_dir: Path | None = None,
    metric: str = TEST_ACC,
    mode: str = "last",
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    latex: bool = False,
) -> ReportResult:
    """Write the comparison report of one sweep into ``out_dir`` and return what was written.

    Selects the sweep by ``sweep_run_id`` (its parent run) or the latest sweep parent run of
    ``experiment`` (of any experiment when both are None). ``metric`` is compared at the last epoch
    (``mode="last"``; ``"final"``, its old name, still works with a FutureWarning) or at its best
    epoch (``mode="best"``: max, min for losses). ``out_dir`` defaults to ``reports-out/<experiment>/``
    in the working directory. When ``log_to_mlflow``, the files are logged on the sweep's parent run
    under the artifact path ``report/`` (skipped, with a note, without a parent).
    Whatever ``mode`` says, the report also shows ``metric`` three ways side by side (last epoch, best
    epoch on test, selected by noisy validation), in its own table and in the paired gains.
    ``latex``: also write ``tables.tex`` (booktabs; ``reports.latex``).

    Raises ValueError for an unknown experiment or run id, a store without runs, a ``metric`` that no
    run logged, or a bad ``mode``.
    """
    mode = _check_mode(mode)
    uri = tracking_uri or default_tracking_uri()
    client = _open_store(uri)
    sweep = select_sweep(client, experiment=experiment, sweep_run_id=sweep_run_id)
    _check_metric_logged(sweep, metric)
    load_histories(client, sweep.trials, (metric, *HISTORY_KEYS))
    c = compare(sweep.trials, metric=metric, mode=mode)
    notes = [*sweep.notes, *_count_notes(sweep), *c.notes]

    out = Path(out_dir) if out_dir is not None else Path("reports-out") / _safe_name(sweep.experiment_name)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_tables(out, c.tables)
    files |= _write_plots(out, c, metric=metric, mode=mode)
    title, meta = report_header(sweep, uri, c, metric=metric, mode=mode)
    sections = report_sections(c, files, metric=metric, mode=mode, notes=notes)
    files["report.md"] = render.write_markdown(out / "report.md", title=title, meta=meta, sections=sections)
    files["report.html"] = render.write_html(out / "report.html", title=title, meta=meta, sections=sections)
    if latex:
        files["tables.tex"] = write_latex(
            out / "tables.tex",
            selection=c.tables["selection"],
            calibration=c.tables["calibration"],
            detection=c.tables["detection"],
            methods=c.methods,
            metric=metric,
            title=title,
        )
    logged = log_to_mlflow and _log_to_parent_run(client, sweep, out, notes)
    return ReportResult(
        out_dir=out,
        files=files,
        tables=c.tables,
        experiment=sweep.experiment_name,
        sweep_name=sweep.name,
        sweep_run_id=sweep.parent_run_id,
        logged_to_mlflow=logged,
        notes=notes,
    )


def _check_mode(mode: str) -> str:
    if mode == DEPRECATED_MODE:
        warnings.warn(DEPRECATED_MODE_NOTE, FutureWarning, stacklevel=3)
        return "last"
    if mode not in MODES:
        raise ValueError(f"mode must be 'last' or 'best', got {mode!r}")
    return mode


def _open_store(uri: str) -> MlflowClient:
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        # Opening a missing SQLite store would silently create an empty one.
        raise ValueError(
            f"no MLflow store at {db} (tracking URI {uri}); run a sweep first or set MLFLOW_TRACKING_URI"
        )
    return MlflowClient(tracking_uri=uri)


def _check_metric_logged(sweep: Sweep, metric: str) -> None:
    """A metric that no finished run logged is a typo, not an empty report."""
    known = sorted({k for t in sweep.trials for k in t.metrics})
    if metric not in known and any(t.status == "FINISHED" for t in sweep.trials):
        raise ValueError(
            f"metric {metric!r} was not logged by any run of sweep {sweep.name!r}; metrics: {', '.join(known)}"
        )


def _count_notes(sweep: Sweep) -> list[str]:
    if sweep.planned_trials is not None and sweep.planned_trials != len(sweep.trials):
        return [f"the sweep planned {sweep.planned_trials} trials; {len(sweep.trials)} runs were logged"]
    return []


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _write_tables(out: Path, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """One CSV per table, named by it; returns file name -> path."""
    files = {}
    for name, table in tables.items():
        files[f"{name}.csv"] = out / f"{name}.csv"
        table.to_csv(files[f"{name}.csv"], index=False)
    return files


def _write_plots(out: Path, c: Comparison, *, metric: str, mode: str) -> dict[str, Path]:
    t, methods = c.tables, c.methods
    pngs = (
        plots.accuracy_vs_noise(
            t["accuracy"], metric=metric, mode=mode, methods=methods, path=out / "accuracy_vs_noise.png"
        ),
        plots.selection_vs_noise(
            t["selection"], metric=metric, methods=methods, path=out / "selection_vs_noise.png"
        ),
        plots.learning_curves(
            c.curves,
            metric=metric,
            conditions=c.curve_conditions,
            methods=methods,
            path=out / "learning_curves.png",
        ),
        plots.cost_bars(t["cost"], methods=methods, path=out / "cost.png"),
    )
    if c.kept_conditions:  # some method selects samples
        clean = t["kept"].dropna(subset="clean_labels_mean").groupby("condition").clean_labels_mean.first()
        pngs += (
            plots.kept_curves(
                c.curves,
                conditions=c.kept_conditions,
                methods=methods,
                clean=clean.to_dict(),
                path=out / "kept_precision.png",
            ),
        )
    return {png.name: png for png in pngs}


def _log_to_parent_run(client: MlflowClient, sweep: Sweep, out: Path, notes: list[str]) -> bool:
    """Log the report's files on the sweep's parent run under ``report/``; whether that worked (if
    not, a note says why)."""
    if sweep.parent_run_id is None:
        notes.append("no sweep parent run to attach the report to; not logged to MLflow")
        return False
    try:
        client.log_artifacts(sweep.parent_run_id, str(out), artifact_path="report")
    except (MlflowException, OSError) as err:
        # The files are on disk already; a store that refuses artifacts should not lose them.
        notes.append(f"could not log the report to MLflow run {sweep.parent_run_id}: {err}")
        return False
    return True
