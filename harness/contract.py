"""What the harness promises to whoever reads its MLflow runs: the store, tag names, metric names.

The writer (harness.tracking, harness.sync, the engine and the trial) and the readers (reports/, the
summaries, the tests) import these names from here, so a name changes in one place and a reader
never defines what the writer writes. Standard library only: `harness run` imports it on machines
with torch alone, and reports/ imports it without pulling in the trainer.

Runs (docs/architecture.md, "What the harness promises"):
- parent run (one per sweep): name = sweep name; tags RUN_KIND_TAG = SWEEP_RUN, SWEEP_NAME_TAG,
  SWEEP_FILE_TAG; param SWEEP_TRIALS_PARAM (how many trials the sweep launches).
- child run (one per trial): name = the trial's readable name; tags PARENT_TAG, RUN_KIND_TAG =
  TRIAL_RUN, TRIAL_KEY_TAG (the trial's stable id), TRIAL_INDEX_TAG, SWEEP_NAME_TAG, WORLD_SIZE_TAG
  (its data-parallel processes), PACK_TAG (the pack it trained in), the runtime and code tags; ERROR_TAG on failure; COLLAPSED_TAG ("true"/"false") on a run that ended with
  TRAIN_COLLAPSED logged. Params: the resolved config flattened with dots. Metrics: per epoch,
  step = epoch (1-based); accuracies and shares are fractions in [0, 1] (`is_fraction_metric`).
- experiments: tagged EXPERIMENT_KIND_TAG = MODEL_TRAINING, so MLflow 3's UI opens them on the runs
  table, not on its GenAI overview.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# --- the store ---------------------------------------------------------------------------------

SQLITE_PREFIX = "sqlite:///"


def default_tracking_uri() -> str:
    """The tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs cwd>/mlflow.db``.

    The default is absolute because Ray trials change their working directory; a relative
    ``sqlite:///mlflow.db`` would give every trial its own empty store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"{SQLITE_PREFIX}{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other kind of store."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    # sqlite:////abs/path keeps the leading slash of the absolute path after the prefix.
    return Path(uri[len(SQLITE_PREFIX) :])


# --- experiments -------------------------------------------------------------------------------

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # MLflow 3's "Model training" kind (not genai_development)

# --- run tags ----------------------------------------------------------------------------------

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"
RUN_KIND_TAG = "harness.run_kind"
SWEEP_RUN, TRIAL_RUN = "sweep", "trial"  # the values of RUN_KIND_TAG
SWEEP_NAME_TAG = "harness.sweep_name"
SWEEP_FILE_TAG = "harness.sweep_file"
TRIAL_KEY_TAG = "harness.trial_key"
TRIAL_INDEX_TAG = "harness.trial_index"
ERROR_TAG = "harness.error"
COLLAPSED_TAG = "harness.collapsed"  # "true" on a run whose kept head ended collapsed (reports leave it out)
RAY_TRIAL_TAG = "harness.ray_trial_id"
RETRIES_TAG = "harness.retries"  # how often Ray retried the trial
# Result keys of a trial's reports to Ray (Tune or Train), beside its metrics
ENV_RESULT_KEY = "harness_env"  # the tags a trial reports about where it runs (device, versions, host)
# the epochs a resumed data-parallel trial reports again from its checkpoint's history: Ray Train keeps
# a checkpoint whose epoch the Tune driver may never have received (it was interrupted in between)
REPLAY_RESULT_KEY = "harness_replay"
# the newest checkpoint of a data-parallel trial, as Ray's TuneReportCallback adds it to Tune's results
TRAIN_CHECKPOINT_KEY = "checkpoint_path"
# a pack's report to Ray Tune: {trial key: the member's latest metrics, "epoch", "status" (training,
# finished, collapsed, failed) and "error"} for every member (harness.tune_runner, harness.tracking)
MEMBERS_RESULT_KEY = "harness_members"
WORLD_SIZE_TAG = "harness.world_size"  # data-parallel processes of the trial (run.workers; 1: one process)
# the pack a trial trained in, "<pack id>:<pack size>" (e.g. "3:4": 4 trials as one step on one device);
# absent or empty: the trial trained alone (pack size 1)
PACK_TAG = "harness.pack"
# harness sync's runs (harness.sync): launcher=run (`harness train` sets train, a Ray sweep none), the
# export they came from, true on a run whose trial had not ended when synced (KILLED), and what the
# last sync logged (a later sync skips the trial when that is unchanged)
LAUNCHER_TAG = "harness.launcher"
EXPORT_TAG = "harness.export_id"
UNFINISHED_TAG = "harness.unfinished"
SYNCED_TAG = "harness.synced"
# where a trial ran and with what code (harness.runtime)
PYTHON_TAG = "harness.python"
GIT_DIRTY_TAG = "harness.git_dirty"
DEVICE_TAG = "harness.device"
TORCH_TAG = "harness.torch"
CUDA_TAG = "harness.cuda"
HOST_TAG = "harness.host"
GPU_TAG = "harness.gpu"
MPS_PIPE_TAG = "harness.mps_pipe"  # `harness sweep --mps`: the GPU was shared under this MPS daemon

SWEEP_TRIALS_PARAM = "sweep.trials"  # on the parent run

# --- metrics -----------------------------------------------------------------------------------

TEST_ACC = "test/acc"  # the kept inference head
TEST_ACC_ENSEMBLE = "test/acc_ensemble"
TRAIN_LOSS = "train/loss"
TRAIN_ACC_NOISY = "train/acc_noisy"  # against the labels trained on
TRAIN_ACC_CLEAN = "train/acc_clean"  # against the true labels
# share of flipped samples predicted as their wrong label; absent where no label was flipped (no noise, or
# a data set whose labels came noisy: nothing to measure it on), so readers show n/a, not 0
TRAIN_MEMORIZED = "train/memorized"
TRAIN_COLLAPSED = "train/collapsed"  # 1.0 when the kept head's output has become input-independent
TRAIN_COLLAPSED_EPOCHS = "train/collapsed_epochs"  # how many epochs in a row it has been collapsed
# share of a batch's (train) or the evaluation set's predictions in its most frequent class (collapse)
TRAIN_PRED_TOP_SHARE = "train/pred_top_share"
TRAIN_IMAGES = "train/images"  # images and steps of the epoch (this process's world: all of them)
TRAIN_STEPS = "train/steps"
TRAIN_SOFT_WEIGHT = "train/soft_weight"  # the soft target's weight at the epoch's end (a ramp's progress)
LEARNING_RATE = "lr"  # the learning rate at the epoch's end
TIME_EPOCH_S = "time/epoch_s"
TIME_TRAIN_S = "time/train_s"  # the epoch's training alone (time/epoch_s adds its evaluation)
PERF_IMG_PER_S = "perf/img_per_s"
GPU_PEAK_MEM_MB = "gpu/peak_mem_mb"
TRAIN_PARAMS = "model/train_params"  # logged at the first epoch
INFERENCE_PARAMS = "model/inference_params"
HEAD_ACC = re.compile(r"test/acc_head(\d+)$")  # test/acc_head{h}, one per head
# share of the training labels flipped, and of the held-out split's (data.val_fraction > 0); first epoch
NOISE_REALIZED_RATE = "noise/realized_rate"
NOISE_VAL_REALIZED_RATE = "noise/val_realized_rate"
# The held-out split (data.val_fraction > 0): the kept head against the true labels, and against the labels
# corrupted with the trial's noise spec (what a practitioner without clean labels can select on)
VAL_ACC = "val/acc"
VAL_ACC_NOISY = "val/acc_noisy"
# Calibration on the test set, every epoch: expected calibration error (15 equal-width confidence bins, a
# fraction) and the mean negative log-likelihood of the true class (nats), kept head and heads' ensemble
TEST_ECE = "test/ece"
TEST_NLL = "test/nll"
TEST_ECE_ENSEMBLE = "test/ece_ensemble"
TEST_NLL_ENSEMBLE = "test/nll_ensemble"
# Noise detection after the last epoch (harness.train.evaluate.detect_noise): how well a per-sample score finds the
# flipped training labels. AUROC; precision and recall when flagging as many samples as are flipped (equal).
# Score: the kept head's loss on the given label; _consensus: the heads' consensus disagreeing with it
# (several heads only). Not logged where no label is flipped (undefined there).
TRAIN_DETECT_AUROC = "train/detect_auroc"
TRAIN_DETECT_PRECISION = "train/detect_precision"
TRAIN_DETECT_RECALL = "train/detect_recall"
TRAIN_DETECT_AUROC_CONSENSUS = "train/detect_auroc_consensus"
TRAIN_DETECT_PRECISION_CONSENSUS = "train/detect_precision_consensus"
TRAIN_DETECT_RECALL_CONSENSUS = "train/detect_recall_consensus"
# Sample selection, every epoch, for the methods that train each head on part of the batch (Co-teaching,
# Co-teaching+, JoCoR): the share of the batch each head trained on (mean over heads), and the share of
# those samples whose given label is the true one (Co-teaching's "label precision"). Not logged by methods
# that train on every sample.
TRAIN_KEPT = "train/kept"
TRAIN_KEPT_PRECISION = "train/kept_precision"
# What one training step costs, counted once per trial on a copy of its graph: FLOPs of forward, loss and
# backward at the trial's batch size (GFLOP); memory of parameters, gradients, optimizer state and the
# tensors saved for backward, each storage once (MB, in the dtype the step runs in); FLOPs of one forward
# of the kept inference head per image (GFLOP)
COST_STEP_GFLOPS = "cost/step_gflops"
COST_STEP_MEM_MB = "cost/step_mem_mb"
COST_INFER_GFLOPS = "cost/infer_gflops"
# step FLOPs x steps per second of the epoch's training (TFLOP/s; a pack member: its own share), and
# a pack member's whole pack's (every member's steps over the pack's training time)
PERF_TFLOPS = "perf/tflops"
PERF_PACK_TFLOPS = "perf/pack_tflops"


def head_acc(head: int, split: str = "test") -> str:
    """The metric of head `head`'s accuracy on an evaluation split (test/acc_head{h}, val/acc_head{h})."""
    return f"{split}/acc_head{head}"


def pred_top_share(split: str) -> str:
    """The share of an evaluation split's predictions in its most frequent class, e.g. test/pred_top_share."""
    return f"{split}/pred_top_share"


@dataclass(frozen=True)
class SplitMetrics:
    """The metrics of one evaluation split (test, val) by name: `SplitMetrics("test").acc` is TEST_ACC.
    Accuracies against the true labels; `acc_noisy` against the split's noisy labels (val only)."""

    split: str

    def _name(self, what: str) -> str:
        return f"{self.split}/{what}"

    acc = property(lambda self: self._name("acc"))  # the kept head
    acc_ensemble = property(lambda self: self._name("acc_ensemble"))
    acc_noisy = property(lambda self: self._name("acc_noisy"))
    ece = property(lambda self: self._name("ece"))
    ece_ensemble = property(lambda self: self._name("ece_ensemble"))
    nll = property(lambda self: self._name("nll"))
    nll_ensemble = property(lambda self: self._name("nll_ensemble"))
    pred_top_share = property(lambda self: pred_top_share(self.split))

    def acc_head(self, head: int) -> str:
        return head_acc(head, self.split)


# noise detection's metrics by the score they rank with: the kept head's loss, the heads' consensus
DETECTION_METRICS = {
    "loss": {
        "auroc": TRAIN_DETECT_AUROC,
        "precision": TRAIN_DETECT_PRECISION,
        "recall": TRAIN_DETECT_RECALL,
    },
    "consensus": {
        "auroc": TRAIN_DETECT_AUROC_CONSENSUS,
        "precision": TRAIN_DETECT_PRECISION_CONSENSUS,
        "recall": TRAIN_DETECT_RECALL_CONSENSUS,
    },
}


# What every trial reports every epoch (test/acc_head{h} besides; train/memorized where labels were
# flipped): the metrics a sweep may rank by.
EPOCH_METRICS = (
    TEST_ACC,
    TEST_ACC_ENSEMBLE,
    TRAIN_LOSS,
    TRAIN_ACC_NOISY,
    TRAIN_ACC_CLEAN,
    TRAIN_MEMORIZED,
    TIME_EPOCH_S,
    PERF_IMG_PER_S,
)
FRACTION_METRICS = frozenset(
    {
        TEST_ACC,
        TEST_ACC_ENSEMBLE,
        TRAIN_ACC_NOISY,
        TRAIN_ACC_CLEAN,
        TRAIN_MEMORIZED,
        VAL_ACC,
        VAL_ACC_NOISY,
        TEST_ECE,
        TEST_ECE_ENSEMBLE,
        TRAIN_DETECT_PRECISION,
        TRAIN_DETECT_RECALL,
        TRAIN_DETECT_PRECISION_CONSENSUS,
        TRAIN_DETECT_RECALL_CONSENSUS,
        TRAIN_KEPT,
        TRAIN_KEPT_PRECISION,
    }
)


def is_fraction_metric(key: str) -> bool:
    """Whether `key` is logged as a fraction in [0, 1] (accuracies and shares; reports show percent)."""
    return key in FRACTION_METRICS or HEAD_ACC.match(key) is not None


def lower_is_better(key: str) -> bool:
    """Losses, calibration errors (ECE, NLL), times, memory and cost go down as things improve;
    accuracies, AUROC and throughput go up."""
    return (
        "loss" in key
        or key.rsplit("/", 1)[-1].startswith(("ece", "nll"))
        or key.startswith(("time/", "gpu/", "cost/"))
    )
