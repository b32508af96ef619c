"""Config: Detectron2 key names and defaults, safe YAML loading, `_BASE_` and overrides."""

from .config import CfgNode, ConfigError, load_yaml_with_base, safe_eval


def get_cfg() -> CfgNode:
    """A fresh copy of the default config (every key the original project's YAML files use)."""
    from .defaults import _C

    return _C.clone()


__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_yaml_with_base", "safe_eval"]
