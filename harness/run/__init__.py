"""A trial's life, from a validated config to its results on disk, with torch alone: the one
lifecycle every runner calls (the Ray Tune trainable, `harness run`, `harness train`, a Ray Train
worker).

- `lifecycle`: `train_trials(runs)`, a pack of trials trained as one step (a lone trial: a pack of
  one), each ending with a `TrialResult`;
- `trial`: `TrialJob`, one member ready to train (data -> noisy labels -> graph -> loaders), its
  step cost and its artifacts;
- `state`: `TrialState`, the one vocabulary of how a trial stands, and its MLflow statuses and words;
- `layout`: `TrialFolder`, the one place a trial folder's files are named;
- `export`, `offline`: an exported sweep on disk and `harness run`'s work on it (file locks, resume);
- `outcome`: the closing table; `memory`: will a pack fit its device; `runtime`: where a trial ran;
  `mps`: a private CUDA MPS daemon.

Imports torch, harness.config and the layers below; never Ray, MLflow or harness.tracking (the
import-linter contracts in pyproject.toml).
"""
