"""Building the model from a config file and loading its weights."""
import os

import numpy as np
from mindspore import Tensor
from mindspore.nn.utils import no_init_parameters
from omegaconf import OmegaConf

from gm.cli import ConfigError
from gm.layout import check_layout, model_parameters
from gm.util import instantiate_from_config
from gm.weight_files import open_weights


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


def load_weights(model, path):
    """Load a ``.ckpt`` or official ``.safetensors`` into ``model``, tensor by tensor."""
    with open_weights(path) as reader:
        params = model_parameters(model)
        check_layout({k: p.shape for k, p in params.items()}, {k: reader.shape(k) for k in reader.keys()}, path)
        for name, param in params.items():
            param.set_data(Tensor(np.array(reader.get(name), dtype=np.float32)).astype(param.dtype))


def build_model(config, weights=None):
    """DiffusionEngine from a config (path or loaded) and optional weights (path), all frozen."""
    if isinstance(config, str):
        config = load_config(config)
    if weights:
        with no_init_parameters():  # the file replaces every value: no random initialisation first
            model = instantiate_from_config(config.model)
        load_weights(model, weights)
    else:
        model = instantiate_from_config(config.model)
    for param in model.get_parameters():
        param.requires_grad = False
    model.set_train(False)
    return model
