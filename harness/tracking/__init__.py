"""MLflow tracking: where runs go and how they are written (one parent run per sweep, one child run
per trial), `harness sync`'s logging of an exported sweep, and the MLflow UI.

- `store`: opening the store, experiments, the runs table's address;
- `trial_logger`: `TrialLogger`, one trial's run;
- `sweep_run`: `SweepRun`, a sweep's parent run, and the state file that names it;
- `sync`: an export's results into the store, as a Ray sweep would have logged them;
- `ui`, `ui_app`: the MLflow UI on the store, opening in its "Model training" mode.

What is written under which name is harness.contract's. Imports MLflow, harness.config and
harness.run (trial states, export folders); never Ray (harness.cluster logs Ray's trials through it).
"""

from harness.contract import default_tracking_uri
from harness.tracking.store import (
    MODEL_TRAINING_QUERY,
    UI_HOST,
    UI_PORT,
    experiment_id,
    find_child_run,
    open_store,
    runs_table_url,
)
from harness.tracking.sweep_run import SWEEP_STATE_FILE, SweepRun, read_sweep_state
from harness.tracking.trial_logger import TrialLogger

__all__ = [
    "MODEL_TRAINING_QUERY",
    "SWEEP_STATE_FILE",
    "UI_HOST",
    "UI_PORT",
    "SweepRun",
    "TrialLogger",
    "default_tracking_uri",
    "experiment_id",
    "find_child_run",
    "open_store",
    "read_sweep_state",
    "runs_table_url",
]
