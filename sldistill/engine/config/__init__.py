"""Experiment configuration: keys declared by the code that reads them, YAML loading, checks.

The key names are those of the published YAML files (mdistiller / SLD / MLKD / SortKD /
logit-standardization); their defaults are the SLD/mdistiller ones. One idea per module:

* :mod:`.node`: :class:`CfgNode`, the nested dict with attribute access;
* :mod:`.keys`: the engine's own keys and the published codebases' defaults (``BASES``);
* :mod:`.schema`: the schema, derived from the engine's, the data package's and every
  registered distiller's declarations; plugin loading;
* :mod:`.load`: YAML files, overrides, :func:`load_config`, saving;
* :mod:`.files`: the shipped ``configs/`` folder;
* :mod:`.reference`: ``docs/configs.md``.
"""
from .errors import ConfigError
from .files import configs_root, format_config_list, list_configs, resolve_config_path
from .keys import BASES, ENGINE_KEYS, TRAINER_ALIASES
from .load import (
    apply_logit_stand,
    format_config,
    get_defaults,
    load_config,
    merge_overrides,
    parse_overrides,
    read_yaml,
    run_dir,
    run_name,
    save_config,
    unreleased_reason,
    validate_config,
)
from .node import CfgNode
from .schema import load_plugins, schema

__all__ = [
    "CfgNode", "ConfigError", "BASES", "ENGINE_KEYS", "TRAINER_ALIASES", "schema", "load_plugins",
    "get_defaults", "load_config", "parse_overrides", "merge_overrides", "validate_config", "format_config",
    "save_config", "run_dir", "run_name", "configs_root", "list_configs", "format_config_list", "resolve_config_path",
    "apply_logit_stand", "unreleased_reason", "read_yaml",
]
