"""Report figures (matplotlib, Agg backend, PNG): accuracy vs noise, learning curves, cost bars.

Every function takes the tables from ``reports.tables``, writes one PNG and returns its path. A method
keeps the same colour in every figure. Figures are built with ``matplotlib.figure.Figure`` (rendered
by Agg when saved as PNG) rather than pyplot, so no display and no global backend switch are needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from harness.contract import TRAIN_KEPT, TRAIN_KEPT_PRECISION, TRAIN_MEMORIZED, is_fraction_metric
from reports.rows import amount

DPI = 110


def method_colors(methods: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _metric_label(metric: str) -> str:
    return f"{metric} (%)" if is_fraction_metric(metric) else metric


def _figure(rows: int, cols: int, figsize: tuple[float, float], **shared: bool) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False, **shared)


def _save(fig: Figure, path: Path) -> Path:
    # tight_layout already placed everything; bbox_inches="tight" would measure it all again.
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def accuracy_vs_noise(acc: pd.DataFrame, *, metric: str, mode: str, methods: list[str], path: Path) -> Path:
    """Mean metric vs noise rate, one line per method with +-1 std error bars, one panel per noise kind.

    The clean condition (kind ``none``) is drawn at rate 0 in every rate-based panel; human noise,
    which has label sets instead of rates, gets a categorical axis.
    """
    colors = method_colors(methods)
    panels = _noise_panels(acc)
    fig, axes = _figure(1, len(panels), (5.2 * len(panels) + 2.2, 4.2))
    for ax, (kind, here) in zip(axes[0], panels):
        human = kind == "human"
        ticks = list(dict.fromkeys(here.condition))
        rates = sorted(set(here.noise_rate.dropna() * 100))
        # Nudge methods apart horizontally so overlapping error bars stay readable.
        step = 0.08 if human else 0.012 * max(max(rates, default=0) - min(rates, default=0), 1.0)
        for i, method in enumerate(methods):
            sel = here[(here.method == method) & (here.n > 0)]
            if sel.empty:
                continue
            x = np.array(_noise_x(sel, ticks, human), dtype=float) + (i - (len(methods) - 1) / 2) * step
            # Label sets are categories, not a scale: no connecting lines for human noise.
            ax.errorbar(
                x,
                sel["mean"],
                yerr=sel["std"].fillna(0.0),
                marker="o",
                capsize=3,
                linestyle="none" if human else "-",
                color=colors[method],
                label=method,
            )
        _noise_axis(ax, here, human)
        ax.set_ylabel(_metric_label(metric))
        ax.set_title(
            f"{metric} ({mode}) vs {kind} noise" if kind != "none" else f"{metric} ({mode}), clean labels"
        )
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(
                0.5,
                0.5,
                "n/a (no finished run logged it)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
    # one legend right of the last panel: long method names would cover the points inside a panel
    drawn = set(acc[acc.n > 0].method)
    handles = [Line2D([], [], color=colors[m], marker="o", label=m) for m in methods if m in drawn]
    if handles:
        axes[0][-1].legend(
            handles=handles, title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
    fig.suptitle("Mean over seeds; error bars: ±1 std", fontsize=9, y=0.0, va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def _noise_panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(noise kind, its rows) per panel; a rate-based panel also holds the clean rows (at rate 0)."""
    kinds = [k for k in table.noise_kind.unique() if k != "none"] or ["none"]
    clean = table[table.noise_kind == "none"]
    panels = []
    for kind in kinds:
        here = table[table.noise_kind == kind]
        panels.append((kind, here if kind in ("human", "none") else pd.concat([clean, here])))
    return panels


def _noise_axis(ax, here: pd.DataFrame, human: bool) -> None:
    """Label the x axis: human label sets as categories (in `_noise_x`'s places), else noise rates (%)."""
    ticks = list(dict.fromkeys(here.condition))
    if human:
        ax.set_xticks(range(len(ticks)), [t.removeprefix("human ").strip() or "human" for t in ticks])
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.set_xlabel("Human label set")
    else:
        rates = sorted(set(here.noise_rate.dropna() * 100))
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set_xlabel("Noise rate (%)")


def _noise_x(sel: pd.DataFrame, ticks: list[str], human: bool) -> list[float]:
    """Where ``sel``'s rows go on a `_noise_axis`."""
    return [ticks.index(c) for c in sel.condition] if human else list(sel.noise_rate * 100)


# How each selection rule is drawn in `selection_vs_noise` (the colour is the method's).
RULE_STYLES = {
    "last": ("-", "o", "last epoch"),
    "best": (":", "^", "best epoch (oracle)"),
    "val": ("--", "s", "selected by noisy val."),
}


def selection_vs_noise(selection: pd.DataFrame, *, metric: str, methods: list[str], path: Path) -> Path:
    """Mean metric vs noise under each selection rule: one colour per method, one line style per rule
    (last epoch, best epoch on test, selected by noisy validation), one panel per noise kind.

    The gap between the dotted (oracle) and the dashed (noisy validation) line is what reporting the
    best epoch overstates; rules without values (no noisy held-out split) are not drawn.
    """
    colors = method_colors(methods)
    panels = _noise_panels(selection)
    fig, axes = _figure(1, len(panels), (5.2 * len(panels) + 2.2, 4.4))
    for ax, (kind, here) in zip(axes[0], panels):
        human = kind == "human"
        ticks = list(dict.fromkeys(here.condition))
        for method in methods:
            for rule, (style, marker, _) in RULE_STYLES.items():
                sel = here[(here.method == method) & (here.rule == rule) & (here.n > 0)]
                if not sel.empty:
                    x = _noise_x(sel, ticks, human)
                    ax.plot(x, sel["mean"], linestyle=style, marker=marker, color=colors[method], alpha=0.9)
        _noise_axis(ax, here, human)
        ax.set_ylabel(_metric_label(metric))
        ax.set_title(
            f"{metric} vs {kind} noise, three selection rules" if kind != "none" else f"{metric}, clean"
        )
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "n/a (no finished run)", ha="center", va="center", transform=ax.transAxes)
    _selection_legends(axes[0][-1], selection, methods, colors)
    fig.suptitle("Mean over seeds", fontsize=9, y=0.0, va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def _selection_legends(ax, selection: pd.DataFrame, methods: list[str], colors: dict) -> None:
    """Two legends right of ``ax``: colours are methods, line styles are rules (those drawn)."""
    drawn = set(selection[selection.n > 0].method)
    by_method = [Line2D([], [], color=colors[m], label=m) for m in methods if m in drawn]
    by_rule = [
        Line2D([], [], color="black", linestyle=st, marker=mk, label=name)
        for rule, (st, mk, name) in RULE_STYLES.items()
        if (selection[selection.rule == rule].n > 0).any()
    ]
    if by_method:
        first = ax.legend(
            handles=by_method, title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
        ax.add_artist(first)
        ax.legend(handles=by_rule, title="epoch", fontsize=8, loc="lower left", bbox_to_anchor=(1.02, 0))


def learning_curves(
    curves: pd.DataFrame, *, metric: str, conditions: list[str], methods: list[str], path: Path
) -> Path:
    """Per-epoch mean over seeds (band: +-1 std) of ``metric`` and ``train/memorized``.

    One row of panels per noise condition; fractions are drawn in percent.
    """
    colors = method_colors(methods)
    panels = [(metric, _metric_label(metric)), (TRAIN_MEMORIZED, "Memorized flipped labels (%)")]
    fig, axes = _figure(len(conditions), 2, (11, 3.6 * len(conditions)))
    for row, cond in zip(axes, conditions):
        for ax, (key, ylabel) in zip(row, panels):
            sel = curves[(curves.condition == cond) & (curves.key == key)]
            why = "no flipped labels" if key == TRAIN_MEMORIZED else "not logged"
            _curve_panel(ax, sel, methods, colors, key=key, missing=f"n/a ({why})")
            ax.set_title(f"{key} per epoch, {cond}")
            ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def kept_curves(
    curves: pd.DataFrame, *, conditions: list[str], methods: list[str], clean: dict[str, float], path: Path
) -> Path:
    """Per-epoch mean over seeds (band: +-1 std) of ``train/kept_precision`` and ``train/kept``, one
    row of panels per noise condition, for the methods that select samples (the others log neither).

    ``clean``: condition -> share of clean training labels (%), drawn as a dashed line on the precision
    panel: the label precision of training on every sample.
    """
    colors = method_colors(methods)
    panels = [
        (TRAIN_KEPT_PRECISION, "Label precision of the kept samples (%)"),
        (TRAIN_KEPT, "Kept share of the batch (%)"),
    ]
    fig, axes = _figure(len(conditions), 2, (11, 3.6 * len(conditions)))
    for row, cond in zip(axes, conditions):
        for ax, (key, ylabel) in zip(row, panels):
            sel = curves[(curves.condition == cond) & (curves.key == key)]
            if key == TRAIN_KEPT_PRECISION and not math.isnan(clean.get(cond, math.nan)):
                ax.axhline(
                    clean[cond], color="gray", linestyle="--", linewidth=1, label="every sample (clean share)"
                )
            _curve_panel(ax, sel, methods, colors, key=key, missing="n/a (no method selects samples)")
            ax.set_title(f"{key} per epoch, {cond}")
            ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def _curve_panel(ax, sel: pd.DataFrame, methods: list[str], colors: dict, *, key: str, missing: str) -> None:
    """One panel of per-epoch curves: a line per method with a +-1 std band, fractions in percent."""
    scale = 100.0 if is_fraction_metric(key) else 1.0
    for method in methods:
        m = sel[sel.method == method].sort_values("step")
        if m.empty:
            continue
        mean, std = m["mean"].to_numpy() * scale, m["std"].fillna(0.0).to_numpy() * scale
        ax.plot(m.step, mean, marker=".", color=colors[method], label=method)
        ax.fill_between(m.step, mean - std, mean + std, color=colors[method], alpha=0.15, linewidth=0)
    if sel.empty:
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, color="gray")
    else:
        ax.legend(title="method", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if sel.step.nunique() == 1:  # one epoch: a tick at it, not a fractional axis around it
        ax.set_xticks(sel.step.unique())
    ax.set_xlabel("Epoch")
    ax.grid(alpha=0.3)


# The panels of `cost_bars`: cost-table column, its ratio column (None: no ratio), title, why n/a
COST_PANELS = [
    ("step_gflops", "step_gflops_x", "Step GFLOPs (computed)", "n/a (not logged)"),
    ("step_mem_mb", "step_mem_mb_x", "Memory per step (MB, computed)", "n/a (not logged)"),
    ("infer_gflops", "infer_gflops_x", "Inference GFLOPs per image", "n/a (not logged)"),
    ("time_epoch_s", None, "Time per epoch (s)", "n/a (not logged)"),
    ("img_per_s", None, "Training throughput (images/s)", "n/a (not logged)"),
    ("tflops", None, "Achieved TFLOP/s", "n/a (not logged)"),
]


def cost_bars(cost: pd.DataFrame, *, methods: list[str], path: Path) -> Path:
    """Horizontal bars per method (and setup), first method on top: computed step GFLOPs, memory per
    step and inference GFLOPs, each annotated with its ratio to individual training (x1.00 for it);
    measured time per epoch, images/s and TFLOP/s. The memory panel draws the computed step memory and,
    where GPU runs logged it, the measured peak GPU memory beside it (hatched)."""
    colors = method_colors(methods)
    bar_colors = [colors[m] for m in cost.method]
    # a method trained in several setups (workers, pack) has a bar per setup, named by it
    one_setup = len(cost.drop_duplicates(["workers", "pack"])) <= 1
    labels = [
        m if one_setup else f"{m} ({w:g} workers, pack {p:g})"
        for m, w, p in zip(cost.method, cost.workers, cost.pack)
    ]
    gpu = cost.peak_mem_mb.notna().any()
    y = np.arange(len(cost), dtype=float)
    # the panels share the method axis: its names are written once per row, left
    fig, axes = _figure(2, 3, (14.0, 2 * (1.4 + 0.38 * len(cost))), sharey=True)
    for ax, (col, ratio, title, missing) in zip(axes.flat, COST_PANELS):
        ratios = cost[ratio] if ratio else None
        if col == "step_mem_mb" and gpu:  # the measured peak beside the computed step memory
            _bars(ax, y - 0.2, cost[col], ratios, height=0.4, color=bar_colors)
            _bars(ax, y + 0.2, cost.peak_mem_mb, None, height=0.4, color=bar_colors, hatch="//")
            title = "Memory per step (MB): computed; GPU peak hatched"
            if cost[col].isna().all():  # runs from before the computed step memory
                title = "Memory per step (MB): GPU peak hatched; computed n/a"
            values = pd.concat([cost[col], cost.peak_mem_mb])
        else:
            _bars(ax, y, cost[col], ratios, height=0.7, color=bar_colors)
            values = cost[col]
        if values.isna().all():
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
        else:
            ax.set_xlim(0, values.max() * 1.45)  # room for the labels
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, labels)
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=8)
    axes[0][0].set_ylim(len(cost) - 0.5, -0.5)  # first method on top
    fig.suptitle("Cost per method: computed per step (x individual training) and measured", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _bars(
    ax, y: np.ndarray, values: pd.Series, ratios: pd.Series | None, *, height: float, color, hatch=None
) -> None:
    """Horizontal bars at ``y``, each annotated with its value (and ``xN.NN`` where a ratio is given);
    a missing value gets no bar and reads n/a (a panel without any value says so once, elsewhere)."""
    values = values.to_numpy(dtype=float)
    ratios = np.full(len(values), math.nan) if ratios is None else ratios.to_numpy(dtype=float)
    bars = ax.barh(
        y, np.nan_to_num(values, nan=0.0), height=height, color=color, hatch=hatch, edgecolor="white"
    )
    if np.isnan(values).all():
        return
    for bar, v, r in zip(bars, values, ratios):
        ax.annotate(
            amount(v) if math.isnan(v) or math.isnan(r) else f"{amount(v)}  x{r:.2f}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=7,
            color="gray" if math.isnan(v) else "black",
        )
