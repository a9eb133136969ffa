"""`harness bench`: measurements of the training step and the loader, the figures to choose packs,
`resources.gpu` and decode modes by.

- `step`: one topology's step, or a pack's, on synthetic data (`bench_one`);
- `concurrent`: N processes sharing a device, with or without CUDA MPS;
- `loader`: the ImageFolder loader alone, on JPEGs `jpeg_tree` writes;
- `table`: the rows and JSON records.

Imports torch and the trial path below it (train, collab, data, run's MPS daemon); never Ray or MLflow.
"""
