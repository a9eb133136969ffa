"""The trial config and the sweep files that expand into many: one typed tree, strict.

- `schema`: `TrialConfig`, composed of the six sections, each declared with the code that reads it
  (harness.keys); the declarations by dotted key;
- `validate`: `build_config`, the one way a checked config is made (every problem at once);
- `tree`: configs as trees and dotted keys, YAML, `--set`, `ConfigError`;
- `sweepfile`, `grid`: sweep files into trials (grid x seeds), every problem named by its place;
- `packs`: which trials may train as one step, and a sweep's packs;
- `reference`: the config reference (docs/config.md), generated from the declarations.

Imports the sections' owners (harness.data, models, collab, train); never run, tracking or Ray.
"""

from harness.collab.config import CollabConfig
from harness.config.schema import SECTIONS, TrialConfig, all_keys, declaration, field_type, may_differ
from harness.config.tree import (
    ConfigError,
    Problem,
    add_overrides_option,
    dump_yaml,
    flatten,
    key_text,
    load_yaml,
    parse_overrides,
    set_dotted,
    to_dict,
    to_flat,
)
from harness.config.validate import build_config, check_config, check_key, check_value, label_file_problems
from harness.data.config import DataConfig, NoiseConfig
from harness.keys import did_you_mean, shown
from harness.models.config import ModelConfig
from harness.train.config import OptimConfig, RunConfig

__all__ = [
    "SECTIONS",
    "CollabConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "Problem",
    "RunConfig",
    "TrialConfig",
    "add_overrides_option",
    "all_keys",
    "build_config",
    "check_config",
    "check_key",
    "check_value",
    "declaration",
    "did_you_mean",
    "dump_yaml",
    "field_type",
    "flatten",
    "key_text",
    "label_file_problems",
    "load_yaml",
    "may_differ",
    "parse_overrides",
    "set_dotted",
    "shown",
    "to_dict",
    "to_flat",
]
