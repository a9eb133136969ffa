"""Methods side by side (collab.method) and what each costs, from a real MLflow store whose runs have
known metrics: individual training, collaborative learning (hierarchical-4, logged before collab.method
and the cost metrics existed), DML and Co-teaching on two full networks (instances-2) and on two heads
that share a trunk (simple-2), two seeds, two noise conditions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from harness import contract as K
from reports.build import build_report

EPOCHS = 3
SEEDS = (0, 1)
RATES = (0.2, 0.5)
# name -> (topology, heads, collab.method (None: not logged, a run from before the key existed),
#          (step GFLOPs, step MB, inference GFLOPs) (None: not logged), last-epoch test/acc at 20 % noise)
METHODS = {
    "individual": ("individual", 1, "cl", (1.0, 100.0, 0.04), 0.60),
    "hierarchical-4": ("hierarchical", 4, None, None, 0.66),
    "dml instances-2": ("instances", 2, "dml", (2.0, 200.0, 0.04), 0.64),
    "coteaching instances-2": ("instances", 2, "coteaching", (2.0, 210.0, 0.04), 0.70),
    "coteaching simple-2": ("simple", 2, "coteaching", (1.5, 160.0, 0.04), 0.68),
}
SELECTING = ("coteaching", "coteaching_plus", "jocor")  # the methods that log train/kept
TIME = {"individual": 1.0, "hierarchical-4": 3.0, "dml instances-2": 2.0}  # s per epoch; others 2.1, 1.6
# Co-teaching's label precision at the last epoch, per topology and noise rate (+ 0.01 * seed)
PRECISION = {("instances", 0.2): 0.95, ("instances", 0.5): 0.85, ("simple", 0.2): 0.93, ("simple", 0.5): 0.80}


def acc(method: str, rate: float, seed: int, base: float | None = None) -> float:
    """Last-epoch test/acc: 15 points lower at 50 % noise; seeds differ by method, so paired gains vary."""
    index = list(METHODS).index(method) if method in METHODS else 0
    base = METHODS[method][4] if base is None else base
    return base - (0.15 if rate == 0.5 else 0.0) + 0.01 * seed * index


def kept_share(rate: float, epoch: int) -> float:
    """Co-teaching's kept share: the forget rate (= the noise rate) ramps up over the first 2 epochs."""
    return 1.0 - rate * min(epoch / 2, 1.0)


def precision(topology: str, rate: float, seed: int, epoch: int) -> float:
    return PRECISION[(topology, rate)] + 0.01 * seed - 0.05 * (EPOCHS - epoch)


def _log_run(client, exp, parent, *, method, rate, seed, gpu=False, epochs=EPOCHS, params=None, spec=None):
    topology, heads, collab_method, cost, base = spec or METHODS[method]
    name = f"{rate} {method} seed{seed}"
    run = client.create_run(exp, run_name=name, tags={K.PARENT_TAG: parent, K.RUN_KIND_TAG: K.TRIAL_RUN})
    logged = {
        "noise.kind": "symmetric",
        "noise.rate": str(rate),
        "collab.topology": topology,
        "collab.heads": str(heads),
        "collab.split": "None" if topology == "individual" else "2",  # derived: never in a name
        "collab.T": "2.0",
        "collab.T_k": "10",
        # Co-teaching's forget rate is the noise rate ("auto"): it follows the condition, not a method
        "collab.forget_rate": str(rate) if collab_method == "coteaching" else "auto",
        "run.seed": str(seed),
        **({"collab.method": collab_method} if collab_method else {}),
        **(params or {}),
    }
    metrics = [Metric(K.NOISE_REALIZED_RATE, rate, 0, 1)]
    if cost is not None:
        for key, value in zip((K.COST_STEP_GFLOPS, K.COST_STEP_MEM_MB, K.COST_INFER_GFLOPS), cost):
            metrics.append(Metric(key, value, 0, 1))
    seconds = TIME.get(method, 2.1 if topology == "instances" else 1.6)
    for epoch in range(1, epochs + 1):
        metrics += [
            Metric(K.TEST_ACC, acc(method, rate, seed, base) - 0.1 * (epochs - epoch), 0, epoch),
            Metric(K.TIME_EPOCH_S, seconds * (5.0 if epoch == 1 else 1.0), 0, epoch),
        ]
        if collab_method in SELECTING:
            metrics += [
                Metric(K.TRAIN_KEPT, kept_share(rate, epoch), 0, epoch),
                Metric(K.TRAIN_KEPT_PRECISION, precision(topology, rate, seed, epoch), 0, epoch),
            ]
        if gpu:
            metrics += [
                Metric(K.GPU_PEAK_MEM_MB, 3 * cost[1] + epoch, 0, epoch),
                Metric(K.PERF_TFLOPS, 10.0 * heads, 0, epoch),
            ]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in logged.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


PAIR = ("instances", 2)
# (expected name, (topology, heads, collab.method, cost, accuracy), params), in the report's order
KNOBS = [
    ("individual", METHODS["individual"], {}),
    ("hierarchical-4 T=2", ("hierarchical", 4, "cl", None, 0.6), {}),
    ("hierarchical-4 T=4", ("hierarchical", 4, "cl", None, 0.6), {"collab.T": "4.0"}),
    ("dml instances-2", (*PAIR, "dml", None, 0.6), {}),
    (
        "coteaching instances-2 forget_rate=0.2",
        (*PAIR, "coteaching", None, 0.6),
        {"collab.forget_rate": "0.2"},
    ),
    (
        "coteaching instances-2 forget_rate=0.4",
        (*PAIR, "coteaching", None, 0.6),
        {"collab.forget_rate": "0.4"},
    ),
    ("coteaching_plus instances-2", (*PAIR, "coteaching_plus", None, 0.6), {"collab.jocor_lambda": "0.9"}),
    ("jocor instances-2", (*PAIR, "jocor", None, 0.6), {"collab.jocor_lambda": "0.9"}),
]


def _sweep(client, root, name):
    exp = client.create_experiment(name, artifact_location=str(root / f"artifacts-{name}"))
    tags = {K.RUN_KIND_TAG: K.SWEEP_RUN, K.SWEEP_NAME_TAG: name}
    return exp, client.create_run(exp, run_name=name, tags=tags).info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store):
    root = tmp_path_factory.mktemp("methods")
    uri = new_mlflow_store(root)
    fill_store(MlflowClient(tracking_uri=uri), root)
    return {"uri": uri, "root": root}


def fill_store(client: MlflowClient, root) -> None:
    """Experiments ``methods`` (METHODS x RATES x SEEDS), ``gpu`` (two GPU runs) and ``knobs`` (KNOBS)."""
    exp, parent = _sweep(client, root, "methods")
    for rate in RATES:
        for method in reversed(METHODS):  # logged in reverse: the report orders them itself
            for seed in SEEDS:
                _log_run(client, exp, parent, method=method, rate=rate, seed=seed)
    # GPU runs: peak GPU memory and TFLOP/s are logged beside the computed cost
    exp, parent = _sweep(client, root, "gpu")
    for method in ("individual", "coteaching instances-2"):
        _log_run(client, exp, parent, method=method, rate=0.5, seed=0, gpu=True, epochs=2)
    # A study of knobs, logged out of order: collaborative learning's T and Co-teaching's forget rate swept
    exp, parent = _sweep(client, root, "knobs")
    for name, spec, params in reversed(KNOBS):
        _log_run(client, exp, parent, method=name, rate=0.2, seed=0, epochs=1, params=params, spec=spec)


def _report(store, experiment):
    return build_report(
        experiment=experiment,
        out_dir=store["root"] / f"out-{experiment}",
        tracking_uri=store["uri"],
        log_to_mlflow=False,
    )


@pytest.fixture(scope="module")
def report(store):
    return _report(store, "methods")


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_methods_are_named_and_ordered_individual_cl_then_peer_methods(report):
    acc_table = report.tables["accuracy"]
    assert list(dict.fromkeys(acc_table.method)) == list(METHODS)
    md = (report.out_dir / "report.md").read_text()
    assert "| Noise | " + " | ".join(METHODS) + " |" in md
    assert "collab.method" in md.split("## ", 1)[0]  # "Methods vary in" names it
    assert "forget_rate" not in " ".join(acc_table.method)  # follows the noise: not a method


def test_every_method_is_paired_by_seed_with_individual_training(report):
    gains = report.tables["gains"]
    assert set(gains.baseline) == {"individual"}
    for rate in RATES:
        here = gains[gains.noise_rate == rate].set_index("method")
        assert list(here.index) == list(METHODS)[1:]
        for method in list(METHODS)[1:]:
            diffs = [100 * (acc(method, rate, s) - acc("individual", rate, s)) for s in SEEDS]
            row = here.loc[method]
            assert row.n_pairs == 2 and row.diff_mean == pytest.approx(np.mean(diffs), abs=1e-9)
            half = 12.706204736174694 * np.std(diffs, ddof=1) / math.sqrt(2)  # t_{0.975, 1}
            assert row.ci_high == pytest.approx(np.mean(diffs) + half, abs=1e-9)
    md = (report.out_dir / "report.md").read_text()
    assert "| symmetric 50% | coteaching simple-2 | individual | +10.00 [" in md


def test_label_precision_table_and_plot_for_the_methods_that_select(report):
    kept = report.tables["kept"].set_index(["condition", "method"])
    for rate in RATES:
        cond = f"symmetric {rate * 100:g}%"
        for method, (topology, _, collab_method, *_rest) in METHODS.items():
            row = kept.loc[(cond, method)]
            assert row.clean_labels_mean == pytest.approx(100 * (1 - rate))
            if collab_method != "coteaching":  # trains on every sample: n/a, not 100 or 0
                assert row.kept_n == row.kept_precision_n == 0 and math.isnan(row.kept_precision_mean)
                continue
            values = [100 * precision(topology, rate, s, EPOCHS) for s in SEEDS]
            assert row.kept_precision_mean == pytest.approx(np.mean(values), abs=1e-9)
            assert row.kept_precision_n == 2
            assert row.kept_mean == pytest.approx(100 * kept_share(rate, EPOCHS))
    md = (report.out_dir / "report.md").read_text()
    section = _section(md, "Sample selection")
    assert (
        "| Noise | Method | Kept (%) | Label precision of the kept (%) | Clean labels in the data (%) |"
        in section
    )
    assert (
        "| symmetric 50% | coteaching instances-2 | 50.00 ± 0.00 (2) | 85.50 ± 0.71 (2) | 50.00 |" in section
    )
    assert "| symmetric 50% | dml instances-2 | n/a (0) | n/a (0) | 50.00 |" in section
    assert "![kept_precision](kept_precision.png)" in section
    assert (report.out_dir / "kept_precision.png").stat().st_size > 10_000
    assert (report.out_dir / "kept.csv").is_file()
    assert len(pd.read_csv(report.out_dir / "kept.csv")) == len(RATES) * len(METHODS)
    html = (report.out_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # accuracy, selection, cost, label precision, curves


def test_a_knob_is_named_only_on_the_methods_where_it_varies(store):
    """T swept for collaborative learning names hierarchical-4's runs, not individual training's; a
    forget rate swept for Co-teaching names Co-teaching's, not Co-teaching+'s or JoCoR's (which keep
    the default). Individual first, then collaborative learning, then DML, Co-teaching, Co-teaching+,
    JoCoR, whatever order the runs were logged in."""
    result = _report(store, "knobs")
    assert list(dict.fromkeys(result.tables["accuracy"].method)) == [name for name, *_ in KNOBS]
    md = (result.out_dir / "report.md").read_text()
    assert "Methods vary in**: collab.T, collab.forget_rate, collab.method, collab.topology" in md
    gains = result.tables["gains"]
    assert dict(zip(gains.method, gains.baseline)) == {name: "individual" for name, *_ in KNOBS[1:]}


def test_cost_per_method_relative_to_individual_training(report):
    cost = report.tables["cost"].set_index("method")
    assert list(cost.index) == list(METHODS)
    for method, (_, _, _, logged, _) in METHODS.items():
        row = cost.loc[method]
        if logged is None:  # hierarchical-4: logged before the cost metrics existed: n/a, not 0
            assert row[["step_gflops", "step_gflops_x", "step_mem_mb", "infer_gflops_x"]].isna().all()
            continue
        base = METHODS["individual"][3]
        assert (row.step_gflops, row.step_mem_mb, row.infer_gflops) == pytest.approx(logged)
        assert row.step_gflops_x == pytest.approx(logged[0] / base[0])
        assert row.step_mem_mb_x == pytest.approx(logged[1] / base[1])
        assert row.infer_gflops_x == pytest.approx(logged[2] / base[2])
    assert cost.loc["coteaching instances-2", "step_gflops_x"] == pytest.approx(2.0)
    assert cost.loc["individual", ["step_gflops_x", "step_mem_mb_x"]].tolist() == [1.0, 1.0]
    assert cost.peak_mem_mb.isna().all() and cost.tflops.isna().all()  # CPU runs
    assert cost.loc["coteaching simple-2", "time_epoch_s"] == pytest.approx(1.6)  # median over epochs
    md = _section((report.out_dir / "report.md").read_text(), "Cost per method")
    header = (
        "| Method | Workers | Pack | Runs | Step GFLOPs (x individual) | Step memory, MB (x individual) "
        "| Inference GFLOPs/image (x individual) | Time/epoch (s) |"
    )
    assert header in md and "Peak GPU memory" not in md.split("\n\n")[1]  # no GPU runs: no column
    assert "| individual | 1 | 1 | 4 | 1.00 (x1.00) | 100 (x1.00) | 0.04 (x1.00) | 1.00 |" in md
    assert "| coteaching instances-2 | 1 | 1 | 4 | 2.00 (x2.00) | 210 (x2.10) | 0.04 (x1.00) | 2.10 |" in md
    assert "| hierarchical-4 | 1 | 1 | 4 | n/a | n/a | n/a | 3.00 |" in md
    csv = pd.read_csv(report.out_dir / "cost.csv")
    assert {"step_gflops_x", "step_mem_mb_x", "infer_gflops_x", "tflops"} <= set(csv.columns)


def test_gpu_runs_show_peak_memory_beside_the_computed_step_memory(store):
    result = _report(store, "gpu")
    cost = result.tables["cost"].set_index("method")
    assert cost.loc["coteaching instances-2", "peak_mem_mb"] == pytest.approx(
        3 * 210.0 + 2
    )  # max over epochs
    assert cost.loc["coteaching instances-2", "tflops"] == pytest.approx(20.0)
    md = _section((result.out_dir / "report.md").read_text(), "Cost per method")
    assert "| Step memory, MB (x individual) | Peak GPU memory (MB) | Inference GFLOPs/image" in md
    assert "| Images/s | TFLOP/s | Training params |" in md
    assert "| coteaching instances-2 | 1 | 1 | 1 | 2.00 (x2.00) | 210 (x2.10) | 632 | 0.04 (x1.00) |" in md
    assert (result.out_dir / "cost.png").stat().st_size > 10_000
