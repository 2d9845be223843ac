"""Config-driven construction, as in generative-models: ``{target: dotted.path, params: {...}}``."""
import importlib


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
