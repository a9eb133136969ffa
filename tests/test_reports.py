"""The comparison report on a real MLflow store with known metric values."""

from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness.contract import default_tracking_uri
from reports.build import build_report
from reports.cli import add_report_arguments, run_report
from reports.frame import trial_frame
from reports.runs import load_histories, select_sweep
from reports.tables import accuracy_table

T_975 = {2: 4.302652729749462, 1: 12.706204736174694}  # t-table: 97.5% quantile by degrees of freedom
EPOCHS = 3
SEEDS = (0, 1, 2)
# Final-epoch test/acc per (noise rate, topology) and seed 0, 1, 2 (sweep "main").
ACC = {
    (0.2, "individual"): (0.80, 0.82, 0.81),
    (0.2, "hierarchical"): (0.84, 0.85, 0.87),
    (0.4, "individual"): (0.70, 0.66, 0.68),
    (0.4, "hierarchical"): (0.75, 0.74, 0.78),
}
MEMORIZED = {"individual": 0.30, "hierarchical": 0.10, "simple": 0.20}  # final epoch, + 0.01 * seed
PARAMS = {
    "individual": (1000, 1000),
    "hierarchical": (2600, 1000),
    "simple": (1800, 1000),
}  # (train, inference)


def _log_trial(
    client,
    exp_id,
    parent_id,
    *,
    kind,
    rate,
    topology,
    heads,
    seed,
    acc,
    status="FINISHED",
    error=None,
    gpu=False,
    start=0,
    collapsed=None,
):
    name = f"{kind}-{rate} {topology}-{heads} seed{seed}"
    tags = {"mlflow.parentRunId": parent_id, "harness.run_kind": "trial"}
    if error:
        tags["harness.error"] = error
    if collapsed is not None:
        tags["harness.collapsed"] = "true" if collapsed else "false"
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=name)
    params = {
        "data.name": "synthetic",
        "data.root": f"/tmp/data{seed}",
        "noise.kind": kind,
        "noise.rate": str(rate),
        "model.arch": "cnn_small",
        "collab.topology": topology,
        "collab.heads": str(heads),
        "collab.T": "2.0",
        # Derived from the topology (its default split): must not show up in the method's name.
        "collab.split": "None" if topology == "individual" else "2,3",
        "optim.epochs": str(EPOCHS),
        "run.seed": str(seed),
        "run.device": "cpu",
    }
    metrics = [
        Metric("model/train_params", PARAMS[topology][0], 0, 0),
        Metric("model/inference_params", PARAMS[topology][1], 0, 0),
    ]
    if status == "FINISHED":
        mem = MEMORIZED[topology] + 0.01 * seed
        for epoch in range(1, EPOCHS + 1):
            last = epoch == EPOCHS
            # Epoch 2 is the best epoch (final + 0.01); epoch 1 is far behind.
            value = acc if last else acc + 0.01 if epoch == 2 else acc - 0.2
            metrics += [
                Metric("test/acc", value, epoch, epoch),
                Metric("train/memorized", mem if last else mem / 2, epoch, epoch),
                Metric("train/acc_clean", 0.9 - mem, epoch, epoch),
                # First epoch slow (warm-up): the report uses the median over epochs.
                Metric("time/epoch_s", (5.0 if epoch == 1 else 1.0) * heads, epoch, epoch),
                Metric("perf/img_per_s", 1000.0 / heads, epoch, epoch),
            ]
            if gpu:
                metrics.append(Metric("gpu/peak_mem_mb", 100.0 * heads + epoch, epoch, epoch))
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("mlflow.runName", name)],
    )
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def _parent(client, exp_id, name, start, planned=None):
    tags = {"harness.run_kind": "sweep", "harness.sweep_name": name}
    run = client.create_run(exp_id, start_time=start, run_name=name, tags=tags)
    if planned is not None:  # the sweep side logs how many trials it launches
        client.log_param(run.info.run_id, "sweep.trials", planned)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("mlflow")
    uri = new_mlflow_store(root)
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    ids = {}
    # Experiment "noise-main": an old sweep, then the full 2 x 2 x 3 grid (the latest sweep).
    exp = client.create_experiment("noise-main", artifact_location=str(root / "artifacts-main"))
    old = _parent(client, exp, "old-sweep", now - 10_000)
    _log_trial(client, exp, old, kind="symmetric", rate=0.2, topology="individual", heads=1, seed=0, acc=0.1)
    ids["main"] = _parent(client, exp, "main-sweep", now)
    for (rate, topo), accs in ACC.items():
        for seed, acc in zip(SEEDS, accs):
            _log_trial(
                client,
                exp,
                ids["main"],
                kind="symmetric",
                rate=rate,
                topology=topo,
                heads=1 if topo == "individual" else 4,
                seed=seed,
                acc=acc,
                start=now + seed,
            )
    # Experiment "noise-gaps": clean + symmetric 0.5 with one failed trial, one never logged.
    exp = client.create_experiment("noise-gaps", artifact_location=str(root / "artifacts-gaps"))
    ids["gaps"] = _parent(client, exp, "gaps-sweep", now, planned=12)
    for kind, rate in (("none", 0.0), ("symmetric", 0.5)):
        for topo, heads in (("individual", 1), ("simple", 2)):
            for seed in SEEDS:
                if kind == "none" and topo == "individual" and seed == 1:
                    continue  # never logged: the report must show n = 2 and an ABSENT row
                failed = kind == "symmetric" and topo == "simple" and seed == 2
                _log_trial(
                    client,
                    exp,
                    ids["gaps"],
                    kind=kind,
                    rate=rate,
                    topology=topo,
                    heads=heads,
                    seed=seed,
                    acc=0.5 + 0.1 * seed + (0.05 if topo == "simple" else 0.0),
                    gpu=True,
                    status="FAILED" if failed else "FINISHED",
                    error="RuntimeError: CUDA out of memory" if failed else None,
                )
    # Experiment "noise-collapse": one collaborative seed ended collapsed (at chance), tagged so.
    exp = client.create_experiment("noise-collapse", artifact_location=str(root / "artifacts-collapse"))
    ids["collapse"] = _parent(client, exp, "collapse-sweep", now, planned=6)
    for topo, heads in (("individual", 1), ("hierarchical", 4)):
        for seed in SEEDS:
            collapsed = topo == "hierarchical" and seed == 1
            _log_trial(
                client,
                exp,
                ids["collapse"],
                kind="symmetric",
                rate=0.4,
                topology=topo,
                heads=heads,
                seed=seed,
                acc=0.10 if collapsed else ACC[(0.4, topo)][seed],
                collapsed=collapsed,
            )
    # Experiment with runs but no sweep parent (e.g. `harness train`).
    exp = client.create_experiment("loose", artifact_location=str(root / "artifacts-loose"))
    run = client.create_run(exp, run_name="one-off", tags={"harness.run_kind": "trial"})
    client.log_batch(
        run.info.run_id,
        metrics=[Metric("test/acc", 0.5, 0, 1)],
        params=[Param("noise.kind", "none"), Param("run.seed", "0")],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"uri": uri, "root": root, "client": client, **ids}


@pytest.fixture(scope="module")
def main_report(store):
    return build_report(
        experiment="noise-main", out_dir=store["root"] / "out-main", tracking_uri=store["uri"]
    )


def test_accuracy_table_reproduces_known_means(main_report, store):
    assert main_report.sweep_run_id == store["main"]  # the latest sweep, not "old-sweep"
    acc = main_report.tables["accuracy"]
    assert len(acc) == 4
    for (rate, topo), values in ACC.items():
        label = "individual" if topo == "individual" else "hierarchical-4"
        row = acc[(acc.noise_rate == rate) & (acc.method == label)].iloc[0]
        pct = [100 * v for v in values]
        assert row["mean"] == pytest.approx(statistics.mean(pct), abs=1e-9)
        assert row["std"] == pytest.approx(statistics.stdev(pct), abs=1e-9)
        assert row["n"] == 3
        assert row["unit"] == "%"
        assert row["condition"] == f"symmetric {rate * 100:g}%"


def test_gains_paired_by_seed_with_t_interval(main_report):
    gains = main_report.tables["gains"]
    assert list(gains.method) == ["hierarchical-4", "hierarchical-4"]
    assert set(gains.baseline) == {"individual"}
    for rate in (0.2, 0.4):
        d = [100 * (h - i) for h, i in zip(ACC[(rate, "hierarchical")], ACC[(rate, "individual")])]
        mean, sd = statistics.mean(d), statistics.stdev(d)
        half = T_975[2] * sd / math.sqrt(3)
        row = gains[gains.noise_rate == rate].iloc[0]
        assert row.diff_mean == pytest.approx(mean, abs=1e-9)
        assert row.ci_low == pytest.approx(mean - half, abs=1e-9)
        assert row.ci_high == pytest.approx(mean + half, abs=1e-9)
        assert row.n_pairs == 3 and row.unit == "pp"


def test_cost_memorization_and_files(main_report, store):
    cost = main_report.tables["cost"].set_index("method")
    assert cost.loc["individual", "time_epoch_s"] == pytest.approx(1.0)  # median, not the slow first epoch
    assert cost.loc["hierarchical-4", "time_epoch_s"] == pytest.approx(4.0)
    assert cost.loc["hierarchical-4", "img_per_s"] == pytest.approx(250.0)
    assert cost.loc["hierarchical-4", "train_params"] == 2600
    assert cost.loc["hierarchical-4", "inference_params"] == 1000
    assert (cost.inference_matches_individual == "yes").all()
    assert cost.peak_mem_mb.isna().all()  # CPU runs: no gpu/peak_mem_mb, shown as n/a
    # runs from before the cost metrics: n/a (NaN), never 0, and no ratio to individual training
    assert cost[["step_gflops", "step_mem_mb", "infer_gflops", "step_gflops_x"]].isna().all().all()
    assert (cost.workers == 1).all() and (cost.pack == 1).all(), "untagged runs trained alone, one process"

    mem = main_report.tables["memorization"]
    row = mem[(mem.noise_rate == 0.4) & (mem.method == "hierarchical-4")].iloc[0]
    assert row.memorized_mean == pytest.approx(100 * (0.10 + 0.01), abs=1e-9)  # seeds add 0, .01, .02
    assert row.memorized_std == pytest.approx(1.0, abs=1e-9)
    assert row.acc_clean_mean == pytest.approx(100 * (0.9 - 0.11), abs=1e-9)

    out = main_report.out_dir
    for name in ("accuracy", "gains", "cost", "memorization", "failed"):
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table) == len(main_report.tables[name])
    assert pd.read_csv(out / "accuracy.csv")["mean"].tolist() == pytest.approx(
        main_report.tables["accuracy"]["mean"].tolist()
    )
    assert main_report.tables["failed"].empty
    md = (out / "report.md").read_text()
    first = ACC[(0.2, "individual")]
    cell = f"{100 * statistics.mean(first):.2f} ± {100 * statistics.stdev(first):.2f} (3)"
    assert "| Noise | individual | hierarchical-4 |" in md
    assert f"| symmetric 20% | {cell} | " in md
    assert "![accuracy_vs_noise](accuracy_vs_noise.png)" in md
    for png in ("accuracy_vs_noise.png", "selection_vs_noise.png", "learning_curves.png", "cost.png"):
        assert (out / png).stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "src='accuracy" not in html
    # no method selects samples (and none logged collab.method): no selection section, no such plot
    assert "## Sample selection" not in md and "kept_precision.png" not in main_report.files
    assert main_report.tables["kept"].kept_n.eq(0).all()

    assert main_report.logged_to_mlflow
    logged = {f.path for f in store["client"].list_artifacts(store["main"], "report")}
    assert {"report/report.html", "report/report.md", "report/accuracy.csv", "report/cost.png"} <= logged


def test_cost_table_keeps_each_setup_of_workers_and_pack_apart(tmp_path, new_mlflow_store):
    """Times and memory depend on how a run trained: data-parallel processes (harness.world_size) and
    trials packed into one step (harness.pack = "<pack id>:<pack size>"; absent or empty: alone).
    The cost table gives each (method, workers, pack) a row of its own and says so in every format."""
    uri = new_mlflow_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("setups", artifact_location=str(tmp_path / "artifacts"))
    parent = _parent(client, exp, "setups-sweep", 0)
    # by seed: alone (untagged), 2 workers, packed 4 to a step, alone again (an empty pack tag)
    setups = {0: {}, 1: {"harness.world_size": "2"}, 2: {"harness.pack": "3:4"}, 3: {"harness.pack": ""}}
    for topology, heads in (("individual", 1), ("hierarchical", 4)):
        for seed, tags in setups.items():
            run_id = _log_trial(
                client,
                exp,
                parent,
                kind="symmetric",
                rate=0.4,
                topology=topology,
                heads=heads,
                seed=seed,
                acc=0.5,
            )
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
    result = build_report(
        experiment="setups", out_dir=tmp_path / "out", tracking_uri=uri, log_to_mlflow=False
    )

    cost = result.tables["cost"]
    rows = list(zip(cost.method, cost.workers, cost.pack, cost.n_runs))
    assert rows == [
        ("individual", 1, 1, 2),
        ("individual", 1, 4, 1),
        ("individual", 2, 1, 1),
        ("hierarchical-4", 1, 1, 2),
        ("hierarchical-4", 1, 4, 1),
        ("hierarchical-4", 2, 1, 1),
    ]
    assert (cost.inference_matches_individual == "yes").all()
    csv = pd.read_csv(tmp_path / "out" / "cost.csv")
    assert list(csv.columns[:4]) == ["method", "workers", "pack", "n_runs"]
    assert list(zip(csv.method, csv.workers, csv.pack, csv.n_runs)) == rows
    md = (tmp_path / "out" / "report.md").read_text()
    # CPU runs from before the cost metrics: computed cost n/a (not 0), no peak GPU memory column
    assert (
        "| Method | Workers | Pack | Runs | Step GFLOPs (x individual) | Step memory, MB (x individual) |"
        in md
    )
    assert "| hierarchical-4 | 1 | 4 | 1 | n/a | n/a | n/a | 4.00 |" in md
    assert "Peak GPU memory (MB)" not in md
    assert "3 different setups (workers x pack)" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<th>Method</th><th>Workers</th><th>Pack</th><th>Runs</th>" in html
    assert "<td>individual</td><td>2</td><td>1</td><td>1</td>" in html


def test_memorized_is_not_logged_without_flipped_labels_and_the_report_says_n_a(
    tmp_path, monkeypatch, capsys, new_mlflow_store
):
    """A trial on labels as given (noise.kind none: no flip mask, as for Animal-10N or Clothing1M) has
    no flipped sample to memorize: the engine does not log train/memorized, its epoch line and the
    report say n/a, never 0. A noisy trial beside it logs it as before."""
    from harness import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_mlflow_store(tmp_path))
    common = ["--set", "data.train_subset=30", "--set", "optim.epochs=1", "--set", "run.device=cpu"]
    noisy = ["--set", "noise.kind=symmetric", "--set", "noise.rate=0.4"]
    for name, extra in (("given", []), ("noisy", noisy)):
        args = ["train", *common, *extra, "--experiment", "labels", "--out", str(tmp_path / name)]
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert ("memorized n/a" in out) == (name == "given"), out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("labels").experiment_id])
    logged = {r.data.params["noise.kind"]: set(r.data.metrics) for r in runs}
    assert "train/memorized" not in logged["none"] and "train/memorized" in logged["symmetric"]
    assert {"train/acc_clean", "train/acc_noisy"} <= logged["none"]

    result = build_report(experiment="labels", out_dir=tmp_path / "out", log_to_mlflow=False)
    mem = result.tables["memorization"].set_index("condition")
    assert mem.loc["clean", "memorized_n"] == 0 and math.isnan(mem.loc["clean", "memorized_mean"])
    assert mem.loc["clean", "acc_clean_n"] == 1
    assert mem.loc["symmetric 40%", "memorized_n"] == 1
    md = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"^\| clean \| individual \| n/a \(0\) \| \d+\.\d\d \(1\) \|$", md, re.M), md


def test_best_mode_takes_the_best_epoch(store):
    client = store["client"]
    sweep = select_sweep(client, experiment=None, sweep_run_id=store["main"])
    load_histories(client, sweep.trials, ("test/acc",))
    frame, _ = trial_frame(sweep.trials, metric="test/acc", mode="best")
    acc = accuracy_table(frame, metric="test/acc")
    row = acc[(acc.noise_rate == 0.4) & (acc.method == "individual")].iloc[0]
    assert row["mean"] == pytest.approx(100 * (statistics.mean(ACC[(0.4, "individual")]) + 0.01), abs=1e-9)
    with pytest.raises(ValueError, match="mode must be 'last' or 'best'"):
        trial_frame(sweep.trials, metric="test/acc", mode="oracle")


@pytest.mark.slow
def test_mode_final_is_the_deprecated_name_of_last(store, tmp_path, capsys):
    """`--mode final` (the old spelling) still works, says it is deprecated and reports the last epoch."""
    parser = add_report_arguments(argparse.ArgumentParser())
    assert "{last,best}" in parser.format_help()
    common = ["--experiment", "noise-collapse", "--tracking-uri", store["uri"], "--no-log"]
    for mode in ("last", "final"):
        args = parser.parse_args([*common, "--mode", mode, "--out", str(tmp_path / mode)])
        assert run_report(args) == 0
        assert ("deprecated" in capsys.readouterr().err) == (mode == "final")
    last, final = (pd.read_csv(tmp_path / m / "accuracy.csv") for m in ("last", "final"))
    pd.testing.assert_frame_equal(last, final)
    assert "test/acc, last epoch" in (tmp_path / "final" / "report.md").read_text()
    with pytest.warns(FutureWarning, match="'final' is deprecated"):
        build_report(
            experiment="noise-collapse",
            mode="final",
            out_dir=tmp_path / "api",
            tracking_uri=store["uri"],
            log_to_mlflow=False,
        )


def test_failed_and_missing_runs_are_listed_not_averaged(store, tmp_path, capsys):
    # Through the CLI adapter; the tables are read back from the CSVs it wrote.
    parser = add_report_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--experiment", "noise-gaps", "--out", str(tmp_path), "--tracking-uri", store["uri"], "--no-log"]
    )
    assert run_report(args) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "report.html") in printed and "logged to MLflow" not in printed
    result = SimpleNamespace(
        tables={n: pd.read_csv(tmp_path / f"{n}.csv") for n in ("accuracy", "gains", "cost", "failed")}
    )
    acc = result.tables["accuracy"].set_index(["condition", "method"])
    # The FAILED seed 2 is excluded: mean of seeds 0 and 1 only.
    failed_cell = acc.loc[("symmetric 50%", "simple-2")]
    assert failed_cell.n == 2
    assert failed_cell["mean"] == pytest.approx(100 * np.mean([0.55, 0.65]), abs=1e-9)
    assert failed_cell["std"] == pytest.approx(100 * np.std([0.55, 0.65], ddof=1), abs=1e-9)
    assert acc.loc[("clean", "individual")].n == 2  # seed 1 never logged
    assert acc.loc[("clean", "simple-2")].n == 3
    failed = result.tables["failed"].set_index("status")
    assert sorted(failed.index) == ["ABSENT", "FAILED"]
    assert failed.loc["FAILED", "error"] == "RuntimeError: CUDA out of memory"
    assert failed.loc["FAILED", "run_name"] == "symmetric-0.5 simple-2 seed2"
    assert (
        failed.loc["ABSENT", "condition"],
        failed.loc["ABSENT", "method"],
        failed.loc["ABSENT", "seed"],
    ) == ("clean", "individual", 1)
    # Gains pair only seeds both methods finished: clean has seeds 0, 2; symmetric 50% has 0, 1.
    gains = result.tables["gains"].set_index("condition")
    assert gains.loc["clean", "n_pairs"] == 2 and gains.loc["symmetric 50%", "n_pairs"] == 2
    assert gains.loc["clean", "diff_mean"] == pytest.approx(5.0, abs=1e-9)
    assert gains.loc["clean", "diff_std"] == pytest.approx(0.0, abs=1e-9)
    cost = result.tables["cost"].set_index("method")
    assert cost.loc["simple-2", "peak_mem_mb"] == pytest.approx(203.0)  # max over epochs
    md = (tmp_path / "report.md").read_text()
    assert "CUDA out of memory" in md and "the sweep planned 12 trials; 11 runs were logged" in md


def test_collapsed_runs_are_listed_apart_and_left_out_of_means_and_gains(store, tmp_path):
    result = build_report(
        experiment="noise-collapse", out_dir=tmp_path, tracking_uri=store["uri"], log_to_mlflow=False
    )
    acc = result.tables["accuracy"].set_index("method")
    kept = [ACC[(0.4, "hierarchical")][s] for s in (0, 2)]
    assert acc.loc["hierarchical-4", "n"] == 2
    assert acc.loc["hierarchical-4", "mean"] == pytest.approx(100 * np.mean(kept), abs=1e-9)
    assert acc.loc["individual", "n"] == 3
    gains = result.tables["gains"]
    assert gains.n_pairs.tolist() == [2]  # seed 1 has no collaborative partner left
    individual = [ACC[(0.4, "individual")][s] for s in (0, 2)]
    assert gains.diff_mean.iloc[0] == pytest.approx(100 * (np.mean(kept) - np.mean(individual)), abs=1e-9)
    collapsed = result.tables["collapsed"]
    assert collapsed.run_name.tolist() == ["symmetric-0.4 hierarchical-4 seed1"]
    assert collapsed.value.tolist() == [pytest.approx(0.10)] and collapsed.epochs.tolist() == [EPOCHS]
    assert result.tables["failed"].empty  # collapsed is not failed, and nothing is ABSENT
    md = (tmp_path / "report.md").read_text()
    assert "## Collapsed runs" in md and "symmetric-0.4 hierarchical-4 seed1" in md
    assert "6 runs, 5 aggregated, 1 collapsed (left out), 0 missing or failed" in md
    assert (tmp_path / "collapsed.csv").exists()


def test_default_output_folder_is_where_the_user_runs_the_command(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = build_report(experiment="noise-collapse", tracking_uri=store["uri"], log_to_mlflow=False)
    assert result.out_dir == Path("reports-out") / "noise-collapse"
    assert (tmp_path / "reports-out" / "noise-collapse" / "report.html").is_file()


def test_bad_selection_raises_value_error_naming_what_exists(store, tmp_path):
    with pytest.raises(ValueError, match=r"experiment 'nope' not found.*noise-gaps.*noise-main"):
        build_report(experiment="nope", out_dir=tmp_path, tracking_uri=store["uri"])
    with pytest.raises(ValueError, match=r"sweep run 'deadbeef' not found.*main-sweep"):
        build_report(sweep_run_id="deadbeef", out_dir=tmp_path, tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="not in experiment 'noise-gaps'"):
        build_report(
            experiment="noise-gaps", sweep_run_id=store["main"], out_dir=tmp_path, tracking_uri=store["uri"]
        )
    with pytest.raises(
        ValueError,
        match=r"metric 'test/accuracy' was not logged by any run of sweep 'main-sweep'; metrics: .*, test/acc, time/epoch_s",
    ):
        build_report(
            experiment="noise-main", metric="test/accuracy", out_dir=tmp_path, tracking_uri=store["uri"]
        )
    with pytest.raises(ValueError, match="no MLflow store"):
        build_report(out_dir=tmp_path, tracking_uri=f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_experiment_without_sweep_parent_reports_its_runs(store):
    sweep = select_sweep(store["client"], experiment="loose", sweep_run_id=None)
    assert sweep.parent_run_id is None and [t.name for t in sweep.trials] == ["one-off"]
    assert "no sweep parent run" in sweep.notes[0]
    frame, _ = trial_frame(sweep.trials, metric="test/acc", mode="last")
    assert frame.method.tolist() == ["individual"]  # one method, named by its topology


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri() == "http://mlflow.example:5000"


@pytest.mark.slow  # the one test that needs a browser (CI installs Debian's chromium)
def test_html_renders_in_headless_chromium(main_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        (main_report.out_dir / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, timeout=90, capture_output=True, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert pixels.std() > 0.05 and non_white > 0.05, f"blank page? non-white share {non_white:.3f}"
