"""The `harness` command line: one module per subcommand (`sweep` / `validate`, `train`, `run`,
`sync`, `report`, `ui`, `bench`), each imported only when its subcommand runs, so `harness run` on a
torch-only machine never imports Ray or MLflow (`python -m harness.cli run DIR` where the package is
not installed).

- `main`: the parser and the dispatch, exit statuses (0 ok, 1 a trial failed, 2 bad input, 130 when `run` or `train` is interrupted).

The top layer: it may import every package of the harness and `reports`.
"""

from harness.cli.main import main

__all__ = ["main"]
