"""``tables.tex``: the report's main tables as LaTeX to paste into a paper (``harness report --latex``).

One ``table`` float per table, booktabs rules (``\\usepackage{booktabs}`` in the preamble; nothing
else is needed), noise conditions as rows and methods as columns, cells ``mean ± std`` over seeds,
the best method of each row in bold (all of them when their shown values tie), and a caption that
says how each run's value was chosen (last epoch, best epoch on test, or selected by noisy
validation) and over how many seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from harness.contract import TEST_ACC, lower_is_better

# LaTeX's special characters in text mode (method names, noise conditions)
_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped, for text mode."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def _seeds(counts: Iterable[int]) -> str:
    counts = sorted({int(n) for n in counts if int(n) > 0})
    if not counts:
        return "no finished run"
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] != 1 else ''}"
    return f"{counts[0]}--{counts[-1]} seeds (the number varies by cell)"


def table(
    cells: pd.DataFrame,
    *,
    methods: list[str],
    caption: str,
    label: str,
    lower_is_better: bool = False,
    digits: int = 2,
) -> str:
    """One booktabs table from long-form ``cells`` (columns condition, method, mean, std, n; rows in
    the report's order). Rows: conditions; columns: ``methods``. ``--`` where a cell has no run. The
    caption gets the seed count appended."""
    conditions = list(dict.fromkeys(cells.condition))
    by_cell = {(r.condition, r.method): r for r in cells.itertuples()}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption} Mean $\pm$ standard deviation over {_seeds(cells.n)}; the best method "
        r"of each row in bold.}",
        rf"\label{{{label}}}",
        r"\begin{tabular}{l" + "c" * len(methods) + "}",
        r"\toprule",
        " & ".join(["Noise", *(escape(m) for m in methods)]) + r" \\",
        r"\midrule",
    ]
    for cond in conditions:
        shown = {}
        for m in methods:
            r = by_cell.get((cond, m))
            if r is not None and int(r.n) > 0 and not math.isnan(r.mean):
                shown[m] = (round(r.mean, digits), r.std, int(r.n))
        best = None
        if shown:
            pick = min if lower_is_better else max
            best = pick(v[0] for v in shown.values())
        row = [escape(cond)]
        for m in methods:
            if m not in shown:
                row.append("--")
                continue
            mean, std, n = shown[m]
            body = f"{mean:.{digits}f}" + (rf" \pm {std:.{digits}f}" if n > 1 and not math.isnan(std) else "")
            row.append(f"$\\mathbf{{{body}}}$" if mean == best else f"${body}$")
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


RULE_CAPTIONS = {
    "last": "at the last epoch.",
    "best": (
        "at the best epoch, chosen on the test set: an oracle no practitioner has, which overstates "
        "robust methods."
    ),
    "val": (
        "at the epoch with the highest accuracy on a held-out split with noisy labels (the trial's own "
        "noise; the earliest such epoch on ties), the choice a practitioner without clean labels can make."
    ),
}


def write_latex(
    path: Path,
    *,
    selection: pd.DataFrame,
    calibration: pd.DataFrame,
    detection: pd.DataFrame,
    methods: list[str],
    metric: str,
    title: str,
) -> Path:
    """Write ``tables.tex``: ``metric`` under each selection rule that has values, the last-epoch
    ECE, and the noise-detection AUROC where any run logged it. Returns ``path``."""
    what = "Test accuracy (\\%)" if metric == TEST_ACC else f"\\texttt{{{escape(metric)}}}"
    if len(selection) and selection.unit.iloc[0] == "%" and metric != TEST_ACC:
        what += " (\\%)"
    lower = lower_is_better(metric)
    parts = [
        f"% {escape(title)}: written by `harness report --latex`.",
        "% Needs \\usepackage{booktabs}.",
    ]
    for rule, caption in RULE_CAPTIONS.items():
        cells = selection[selection.rule == rule]
        if not (cells.n > 0).any():
            continue  # e.g. no run had a noisy held-out split
        parts.append(
            table(
                cells,
                methods=methods,
                caption=f"{what} {caption}",
                label=f"tab:{rule}",
                lower_is_better=lower,
            )
        )
    for frame, col, caption, lower_better, label in (
        (
            calibration,
            "ece",
            "Expected calibration error (\\%, 15 equal-width bins) of the kept head on the test set, last epoch.",
            True,
            "tab:ece",
        ),
        (
            detection,
            "detect_auroc",
            "Noise detection: AUROC of the kept head's loss on each training label as a detector of the "
            "flipped labels, after the last epoch (undefined without noise: --).",
            False,
            "tab:detection",
        ),
    ):
        cells = frame.rename(columns={f"{col}_mean": "mean", f"{col}_std": "std", f"{col}_n": "n"})
        if len(cells) and (cells.n > 0).any():
            parts.append(
                table(
                    cells,
                    methods=methods,
                    caption=caption,
                    label=label,
                    lower_is_better=lower_better,
                    digits=3 if col == "detect_auroc" else 2,
                )
            )
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path
