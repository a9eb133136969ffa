"""Ray: a validated sweep as Ray Tune trials (one Tune trial per pack, a lone trial being a pack of
one), data-parallel trials as Ray Train `TorchTrainer`s, and the driver's view of how each ended.

- `tune`: `run_sweep` and the Tuner; `trainable`: what each Tune trial runs (it calls
  harness.run.lifecycle.train_trials), the one module of ours a trial's process imports;
- `transport`: what a Tune trial carries to its worker (`PackSpec`);
- `report`: what a Tune trial reports each epoch, one shape for a pack and a lone trial;
- `raytrain`: a data-parallel trial's workers; `local`: `harness train` of one on this machine;
  `callback`: the Tune callback that logs every trial
  into MLflow from the driver; `outcomes`: each trial's `TrialState`, read back from Tune;
- `launch`: the checks before a sweep starts (its folder, `--resume`, `--mps`).

Imports Ray, harness.tracking and the trial path below it; only the command line imports it. What
runs in a trial's processes (`trainable`, `raytrain` and what they import) loads no MLflow.
"""
