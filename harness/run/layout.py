"""A trial's folder, named in one place: where its checkpoint and artifacts are, and (in an export,
harness.run.export) the files that say what it is and how it stands.

    <trial folder>/
        checkpoint/state.pt        the last checkpoint, to resume from (harness.train.checkpoint)
        checkpoint/artifacts/      after its last epoch: config.yaml, noise_transition.csv,
                                   metrics.json, inference_head.pt
        trial.json  config.yaml  status  history.jsonl  metrics.json  runtime.json  error.txt  .lock
                                   (an exported trial's: harness.run.export)

A Ray Tune trial's checkpoint holds the folders of the trials it trains, each under its name
(`<dirname>/checkpoint/...`), so a pack's members and a lone trial are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
ARTIFACTS_DIR = "artifacts"
# an exported trial's own files (harness.run.export)
TRIAL_FILE = "trial.json"
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status"
HISTORY_FILE = "history.jsonl"
METRICS_FILE = "metrics.json"
RUNTIME_FILE = "runtime.json"
ERROR_FILE = "error.txt"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class TrialFolder:
    """The folder of one trial (`root`) and the paths of its files."""

    root: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def state_file(self) -> Path:
        """The checkpoint to resume from."""
        return self.checkpoint_dir / STATE_FILE

    @property
    def artifacts(self) -> Path:
        return self.checkpoint_dir / ARTIFACTS_DIR

    @property
    def has_checkpoint(self) -> bool:
        return self.state_file.is_file()

    def file(self, name: str) -> Path:
        """One of an exported trial's files (TRIAL_FILE, STATUS_FILE, ...)."""
        return self.root / name


def member_folder(root: Path, dirname: str) -> TrialFolder:
    """The folder of trial `dirname` in a Ray Tune trial's folder (or checkpoint) `root`."""
    return TrialFolder(Path(root) / dirname)
