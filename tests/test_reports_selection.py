"""The report's honest view: last / oracle-best / noisy-validation-selected epochs, cheap baselines as
methods, calibration, noise detection and the LaTeX tables, from a real MLflow store whose runs have
known histories."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from harness import contract as K
from reports.build import build_report
from reports.frame import select_epoch
from reports.latex import escape

SEEDS = (0, 1)
# method -> (topology, heads, label_loss, label_smoothing, final test accuracy at 40 % noise per seed)
METHODS = {
    "individual": ("individual", 1, "ce", 0.0, (0.60, 0.64)),
    "individual+ls0.1": ("individual", 1, "ce", 0.1, (0.63, 0.65)),
    "individual+gce": ("individual", 1, "gce", 0.0, (0.70, 0.69)),
    "hierarchical-4": ("hierarchical", 4, "ce", 0.0, (0.66, 0.70)),
}
CLEAN_BONUS = 0.2  # every method's clean accuracy is its noisy one + 0.2
# test/acc per epoch around the final value b: the best epoch is 2 (b + 0.05), epoch 3 gives b + 0.02
TEST_OFFSETS = (-0.20, 0.05, 0.02, 0.0)
# val/acc_noisy per epoch: ties go to the earliest epoch, so individual-training runs select epoch 3
# (tie of 3 and 4) and hierarchical runs epoch 2 (tie of 2 and 4)
VAL_NOISY = {"individual": (0.30, 0.50, 0.60, 0.60), "hierarchical": (0.30, 0.70, 0.60, 0.70)}
SELECTED = {"individual": 3, "hierarchical": 2}


def _final(method: str, seed: int, clean: bool) -> float:
    return METHODS[method][4][seed] + (CLEAN_BONUS if clean else 0.0)


def _log_run(client, exp, parent, *, method, seed, clean):
    topology, heads, loss, smoothing, _ = METHODS[method]
    kind, rate = ("none", 0.0) if clean else ("symmetric", 0.4)
    name = f"{kind} {method} seed{seed}"
    run = client.create_run(
        exp, run_name=name, tags={"mlflow.parentRunId": parent, "harness.run_kind": "trial"}
    )
    params = {
        "noise.kind": kind,
        "noise.rate": str(rate),
        "collab.topology": topology,
        "collab.heads": str(heads),
        "optim.label_loss": loss,
        "optim.label_smoothing": str(smoothing),
        "optim.gce_q": "0.7",
        "data.val_fraction": "0.05",
        "run.seed": str(seed),
    }
    b = _final(method, seed, clean)
    metrics = []
    for epoch, (offset, val) in enumerate(zip(TEST_OFFSETS, VAL_NOISY[topology]), start=1):
        metrics += [
            Metric(K.TEST_ACC, b + offset, epoch, epoch),
            Metric(K.VAL_ACC_NOISY, val, epoch, epoch),
            Metric(K.VAL_ACC, val + 0.1, epoch, epoch),
            Metric(K.TEST_ECE, 0.10 + 0.01 * seed, epoch, epoch),  # the final value counts
            Metric(K.TEST_NLL, 1.0 + 0.1 * heads, epoch, epoch),
            Metric(K.TEST_ECE_ENSEMBLE, 0.05, epoch, epoch),
            Metric(K.TEST_NLL_ENSEMBLE, 0.9, epoch, epoch),
        ]
    metrics.append(Metric(K.NOISE_REALIZED_RATE, 0.0 if clean else 0.4, 0, 1))
    if not clean:  # detection is undefined without flipped labels: not logged
        metrics += [
            Metric(K.TRAIN_DETECT_AUROC, 0.80 + 0.02 * seed, 0, 4),
            Metric(K.TRAIN_DETECT_PRECISION, 0.60, 0, 4),
            Metric(K.TRAIN_DETECT_RECALL, 0.60, 0, 4),
        ]
        if heads > 1:
            metrics += [
                Metric(K.TRAIN_DETECT_AUROC_CONSENSUS, 0.90, 0, 4),
                Metric(K.TRAIN_DETECT_PRECISION_CONSENSUS, 0.70, 0, 4),
            ]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def report(tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("selection")
    uri = new_mlflow_store(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("baselines", artifact_location=str(root / "artifacts"))
    parent = client.create_run(
        exp, run_name="baselines", tags={"harness.run_kind": "sweep", "harness.sweep_name": "baselines"}
    ).info.run_id
    for clean in (True, False):
        for method in METHODS:
            for seed in SEEDS:
                _log_run(client, exp, parent, method=method, seed=seed, clean=clean)
    client.set_terminated(parent, "FINISHED")
    started = time.time()
    result = build_report(
        experiment="baselines", out_dir=root / "out", tracking_uri=uri, log_to_mlflow=False, latex=True
    )
    assert time.time() - started < 30
    return result


def test_select_epoch_rules_and_ties():
    h = [(1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)]
    assert select_epoch(h, "last", metric="test/acc") == (4, 0.6)
    assert select_epoch(h, "best", metric="test/acc") == (2, 0.7)  # earliest of the tie
    assert select_epoch([(1, 3.0), (2, 1.0), (3, 1.0)], "best", metric="train/loss") == (2, 1.0)  # min
    val = [(1, 0.2), (2, 0.4), (3, 0.9), (4, 0.9)]
    assert select_epoch(h, "val", metric="test/acc", selector=val) == (3, 0.7)
    epoch, value = select_epoch(h, "val", metric="test/acc", selector=[(9, 1.0)])
    assert epoch == 9 and math.isnan(value)  # the metric was not logged at the chosen epoch
    epoch, value = select_epoch(h, "val", metric="test/acc")
    assert epoch is None and math.isnan(value)  # no noisy held-out split: nothing to select with
    with pytest.raises(ValueError, match="rule must be one of last, best, val"):
        select_epoch(h, "oracle", metric="test/acc")


def test_cheap_baselines_are_methods_of_their_own_paired_with_plain_individual_training(report):
    sel = report.tables["selection"]
    assert list(dict.fromkeys(sel.method)) == list(METHODS)
    gains = report.tables["gains"]
    pairs = dict(zip(gains.method, gains.baseline))
    assert pairs == {m: "individual" for m in METHODS if m != "individual"}


@pytest.mark.parametrize("rule", ["last", "best", "val"])
def test_each_selection_rule_takes_its_epoch(report, rule):
    sel = report.tables["selection"].set_index(["condition", "method", "rule"])
    for method, (topology, *_rest) in METHODS.items():
        epoch = {"last": 4, "best": 2, "val": SELECTED[topology]}[rule]
        for cond, clean in (("clean", True), ("symmetric 40%", False)):
            values = [100 * (_final(method, s, clean) + TEST_OFFSETS[epoch - 1]) for s in SEEDS]
            row = sel.loc[(cond, method, rule)]
            assert row["mean"] == pytest.approx(np.mean(values), abs=1e-9), (method, cond, rule)
            assert row["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
            assert row["n"] == 2 and row["epoch_mean"] == epoch and row["unit"] == "%"


def test_the_paired_gains_have_a_column_per_rule(report):
    gains = report.tables["gains"].set_index(["condition", "method"])
    row = gains.loc[("symmetric 40%", "hierarchical-4")]
    for rule in ("last", "best"):  # the same epoch for both methods: the final gap
        diffs = [100 * (a - b) for a, b in zip(METHODS["hierarchical-4"][4], METHODS["individual"][4])]
        assert row[f"diff_mean_{rule}"] == pytest.approx(np.mean(diffs), abs=1e-9)
        assert row[f"n_pairs_{rule}"] == 2
    # noisy validation picks epoch 2 (+0.05) for hierarchical runs and epoch 3 (+0.02) for individual
    diffs = [
        100 * (a + 0.05 - b - 0.02) for a, b in zip(METHODS["hierarchical-4"][4], METHODS["individual"][4])
    ]
    assert row["diff_mean_val"] == pytest.approx(np.mean(diffs), abs=1e-9)
    assert row["diff_mean"] == row["diff_mean_last"]  # the report's mode: final
    t = 12.706204736174694  # t_{0.975, 1}
    half = t * np.std(diffs, ddof=1) / math.sqrt(2)
    assert row["ci_low_val"] == pytest.approx(np.mean(diffs) - half, abs=1e-9)


def test_calibration_and_detection_tables(report):
    cal = report.tables["calibration"].set_index(["condition", "method"])
    row = cal.loc[("symmetric 40%", "hierarchical-4")]
    assert row.ece_mean == pytest.approx(100 * np.mean([0.10, 0.11]), abs=1e-9)  # final epoch, percent
    assert row.nll_mean == pytest.approx(1.4) and row.ece_ensemble_mean == pytest.approx(5.0)
    det = report.tables["detection"].set_index(["condition", "method"])
    noisy = det.loc[("symmetric 40%", "individual")]
    assert noisy.detect_auroc_mean == pytest.approx(0.81) and noisy.detect_auroc_n == 2
    assert noisy.detect_precision_mean == pytest.approx(60.0) and noisy.realized_rate_mean == pytest.approx(
        40.0
    )
    assert noisy.detect_auroc_consensus_n == 0  # one head: no consensus of its own
    assert det.loc[("symmetric 40%", "hierarchical-4")].detect_auroc_consensus_mean == pytest.approx(0.9)
    clean = det.loc[("clean", "individual")]
    assert clean.detect_auroc_n == 0 and math.isnan(clean.detect_auroc_mean)  # undefined, not 0


def test_the_markdown_shows_the_three_rules_side_by_side_and_n_a_for_undefined_detection(report):
    md = (report.out_dir / "report.md").read_text()
    assert (
        "| Noise | Method | Last epoch (%) | Best epoch (oracle, chosen on test) (%) | "
        "Selected by noisy validation (%) |" in md
    )
    values = [100 * (_final("hierarchical-4", s, False) + TEST_OFFSETS[1]) for s in SEEDS]
    oracle = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (2), epoch 2"
    rows = [line for line in md.splitlines() if line.startswith("| symmetric 40% | hierarchical-4 | ")]
    assert oracle in rows[0]  # the selection table comes before the gains table
    assert "ties: the earliest such epoch" in md
    assert "Gain, selected by noisy validation (pp)" in md
    detection = md.split("## Noise detection", 1)[1].split("\n## ", 1)[0]
    clean_row = next(line for line in detection.splitlines() if line.startswith("| clean | individual |"))
    assert clean_row.count("n/a (0)") == 4 and "| 0.00 " in clean_row  # realized rate 0, detection n/a
    assert (report.out_dir / "selection.csv").is_file() and (report.out_dir / "detection.csv").is_file()
    assert (report.out_dir / "selection_vs_noise.png").stat().st_size > 10_000


def test_latex_tables_are_booktabs_with_the_rule_in_the_caption_and_the_best_in_bold(report):
    tex = (report.out_dir / "tables.tex").read_text()
    assert report.files["tables.tex"] == report.out_dir / "tables.tex"
    tables = re.findall(r"\\begin\{table\}.*?\\end\{table\}", tex, flags=re.S)
    assert len(tables) == 5  # three rules, ECE, detection
    for t, words in zip(
        tables, ("at the last epoch", "chosen on the test set", "noisy labels", "calibration", "AUROC")
    ):
        assert words in t
        assert t.count(r"\toprule") == t.count(r"\midrule") == t.count(r"\bottomrule") == 1
        assert "over 2 seeds" in t
        header = next(line for line in t.splitlines() if line.startswith("Noise &"))
        assert header == r"Noise & individual & individual+ls0.1 & individual+gce & hierarchical-4 \\"
        body = t.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
        assert [line.split(" & ")[0] for line in body] == ["clean", r"symmetric 40\%"]
        for line in body:
            cells = line.removesuffix(r" \\").split(" & ")
            assert len(cells) == 5 and all(c == "--" or c.startswith("$") for c in cells[1:])
    # at the last epoch individual+gce is best under noise (69.5); clean too (89.5)
    last = tables[0].split(r"\midrule", 1)[1]
    noisy_row = next(line for line in last.splitlines() if line.startswith("symmetric"))
    assert noisy_row.split(" & ")[3] == r"$\mathbf{69.50 \pm 0.71}$" and noisy_row.count(r"\mathbf") == 1
    # ECE: lower is better, every method ties at 10.5 -> all bold; detection: clean row is "--"
    ece_row = next(line for line in tables[3].splitlines() if line.startswith("symmetric"))
    assert ece_row.count(r"\mathbf") == 4
    det_clean = next(line for line in tables[4].splitlines() if line.startswith("clean"))
    assert det_clean == r"clean & -- & -- & -- & -- \\"
    assert escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"


def test_latex_tables_compile(report, tmp_path):
    engine = shutil.which("pdflatex") or shutil.which("lualatex") or shutil.which("xelatex")
    if engine is None:
        pytest.skip("no LaTeX engine (apt-get install texlive-latex-base texlive-latex-recommended)")
    shutil.copy(report.out_dir / "tables.tex", tmp_path / "tables.tex")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{tables.tex}\n\\end{document}\n"
    )
    done = subprocess.run(
        [engine, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
