"""Configs as in generative-models: YAML files with ``base:`` inheritance, and construction from
``{target: dotted.path, params: {...}}`` nodes."""
import importlib
import os

from omegaconf import OmegaConf

from gm.errors import ConfigError


def get_obj_from_str(path):
    """Import ``package.module.Name`` and return ``Name``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate_from_config(config, **extra):
    """Build ``config.target(**config.params, **extra)``."""
    if "target" not in config:
        raise KeyError(f"config node has no 'target': {dict(config)}")
    params = dict(config.get("params", None) or {})
    params.update(extra)
    return get_obj_from_str(config["target"])(**params)


def load_config(path):
    """Read a YAML config with a ``model: {target, params}`` node.

    ``base: other.yaml`` (relative to the file) is read first and this file merged over it, so a
    training config can reuse an inference config's model.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        config = OmegaConf.load(path)
    except Exception as e:  # omegaconf/yaml raise many types for a bad file
        raise ConfigError(f"{path}: not a readable YAML config ({type(e).__name__})") from None
    if "base" in config:
        base = load_config(os.path.join(os.path.dirname(path), config.pop("base")))
        config = OmegaConf.merge(base, config)
    if "model" not in config or "target" not in config.model:
        raise ConfigError(f"{path}: not a model config (no model.target)")
    return config
