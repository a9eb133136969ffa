"""The engine: how the members of a pack train, epoch by epoch, on one device or as data-parallel
processes.

- `loop`: `fit` (train an epoch, evaluate, checkpoint, detect collapse, score noise detection after
  the last epoch) for a pack, a lone trial being a pack of one; `Member`, one trial in it;
- `training`, `objective`, `step`, `optim`: what a member trains with (its method's objective, the
  step, eager or one CUDA graph for the pack, SGD and its schedule);
- `evaluate`, `scores`: accuracy, calibration and noise detection; `checkpoint`: resume exactly;
- `cost`: what one step costs (FLOPs, memory), counted on fake tensors; `device`: where and from
  which seed; `ddp`: the process group; `log`, `progress`: what a trial prints;
- `config`: the `optim` and `run` sections of a trial config.

Imports torch, harness.collab, harness.models and harness.data; nothing above them.
"""
