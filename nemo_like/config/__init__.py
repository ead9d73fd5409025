"""Recipe configuration: YAML -> ConfigNode, `_target_` instantiation, CLI overrides."""

from nemo_like.config.arg_parser import parse_args_and_load_config
from nemo_like.config.loader import ConfigError, ConfigNode, load_yaml_config

__all__ = ["ConfigError", "ConfigNode", "load_yaml_config", "parse_args_and_load_config"]
