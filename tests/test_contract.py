"""Writer to reader: a small sweep logged through harness.tracking (SweepRun, TrialLogger) as a Ray
sweep logs it, read back by reports/ (select_sweep, build_report). Every tag and metric name comes
from harness.contract, so the writer and the reader can only agree through it."""

from __future__ import annotations

import statistics

import pytest

from harness import config as C
from harness import contract as K
from harness import tracking
from reports.build import build_report
from reports.runs import select_sweep

EPOCHS = 2
# (topology, heads) -> final test accuracy per seed; None: the trial failed after its first epoch
ACC = {("individual", 1): [0.60, 0.62, None], ("simple", 2): [0.70, 0.10, 0.74]}
COLLAPSED = ("simple", 1)  # (topology, seed): its kept head ended collapsed


def _epoch_metrics(acc: float, epoch: int, heads: int, collapsed: bool) -> dict[str, float]:
    metrics = {
        K.TEST_ACC: acc - 0.1 * (EPOCHS - epoch),
        K.TEST_ACC_ENSEMBLE: acc,
        K.TRAIN_LOSS: 2.0 / epoch,
        K.TRAIN_ACC_NOISY: 0.5,
        K.TRAIN_ACC_CLEAN: 0.8,
        K.TRAIN_MEMORIZED: 0.05 * heads,
        K.TRAIN_COLLAPSED: float(collapsed and epoch == EPOCHS),
        K.TIME_EPOCH_S: 1.0 * heads,
        K.PERF_IMG_PER_S: 1000.0 / heads,
        **{K.head_acc(h): acc for h in range(heads)},
    }
    if epoch == 1:  # as the trial logs them
        metrics |= {K.TRAIN_PARAMS: 100.0 * heads, K.INFERENCE_PARAMS: 100.0}
    return metrics


@pytest.fixture(scope="module")
def written(tmp_path_factory, new_mlflow_store):
    """The sweep as the Ray driver writes it: a parent run, one child run per trial, closed."""
    root = tmp_path_factory.mktemp("contract")
    uri = new_mlflow_store(root)
    sweep_run = tracking.SweepRun.open(
        tracking_uri=uri, experiment="contract", sweep_name="contract-sweep", sweep_file="none", num_trials=6
    )
    statuses = []
    for index, ((topology, heads), accs) in enumerate(ACC.items()):
        for seed, acc in enumerate(accs):
            cfg = C.build_config(
                {
                    "noise": {"kind": "symmetric", "rate": 0.4},
                    "collab": {"topology": topology, "heads": heads},
                    "run": {"seed": seed},
                }
            )
            name = f"{topology}-{heads} seed{seed}"
            logger = sweep_run.start_trial(cfg, name=name, key=name, index=3 * index + seed)
            if acc is None:
                logger.log_epoch(1, {**_epoch_metrics(0.3, 1, heads, False), "epoch": 1})
                logger.finish(status="FAILED", error="RuntimeError: NaN loss")
            else:
                collapsed = (topology, seed) == COLLAPSED
                for epoch in range(1, EPOCHS + 1):
                    last = {**_epoch_metrics(acc, epoch, heads, collapsed), "epoch": epoch}
                    logger.log_epoch(epoch, last)
                logger.finish(last, None, status="FINISHED")  # the last result, as the Tune callback does
            statuses.append(sweep_run.client.get_run(logger.run_id).info.status)
    assert sweep_run.close(statuses) == "FAILED"
    return {"uri": uri, "root": root, "sweep_run": sweep_run}


def test_the_reader_finds_the_sweep_its_trials_and_their_tags(written):
    sweep_run = written["sweep_run"]
    sweep = select_sweep(sweep_run.client, experiment="contract", sweep_run_id=None)
    assert (sweep.parent_run_id, sweep.name, sweep.planned_trials) == (sweep_run.run_id, "contract-sweep", 6)
    trials = {t.name: t for t in sweep.trials}
    assert len(trials) == 6
    assert [n for n, t in trials.items() if t.collapsed] == ["simple-2 seed1"]
    assert trials["individual-1 seed2"].status == "FAILED"
    assert trials["individual-1 seed2"].error == "RuntimeError: NaN loss"
    assert trials["simple-2 seed0"].metrics[K.TEST_ACC] == pytest.approx(0.70)
    assert trials["simple-2 seed0"].params["collab.topology"] == "simple"
    parent = sweep_run.client.get_run(sweep_run.run_id)
    assert parent.info.status == "FAILED" and parent.data.tags[K.RUN_KIND_TAG] == K.SWEEP_RUN


def test_the_report_aggregates_what_the_writer_logged(written):
    report = build_report(
        experiment="contract",
        out_dir=written["root"] / "report",
        tracking_uri=written["uri"],
        log_to_mlflow=False,
    )
    acc = report.tables["accuracy"].set_index("method")
    kept = {"individual": [0.60, 0.62], "simple-2": [0.70, 0.74]}  # the failed and the collapsed left out
    for method, values in kept.items():
        assert acc.loc[method, "n"] == 2
        assert acc.loc[method, "mean"] == pytest.approx(100 * statistics.mean(values), abs=1e-9)
        assert acc.loc[method, "unit"] == "%", f"{K.TEST_ACC} is a fraction, shown in percent"
    assert report.tables["collapsed"].run_name.tolist() == ["simple-2 seed1"]
    failed = report.tables["failed"]
    assert failed.run_name.tolist() == ["individual-1 seed2"] and failed.error.tolist() == [
        "RuntimeError: NaN loss"
    ]
    mem = report.tables["memorization"].set_index("method")
    assert mem.loc["simple-2", "memorized_mean"] == pytest.approx(100 * 0.05 * 2, abs=1e-9)
    cost = report.tables["cost"].set_index("method")
    assert cost.loc["simple-2", "time_epoch_s"] == pytest.approx(2.0)
    assert cost.loc["simple-2", "img_per_s"] == pytest.approx(500.0)
    assert cost.loc["simple-2", "train_params"] == 200 and cost.loc["simple-2", "inference_params"] == 100
