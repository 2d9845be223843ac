"""Building the model from a config file and loading its weights."""

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindspore.nn.utils import no_init_parameters

from gm.checkpoints.layout import check_layout, model_parameters
from gm.checkpoints.weight_files import open_weights
from gm.config import instantiate_from_config, load_config
from gm.constants import AMP_DTYPES, AMP_LEVELS
from gm.errors import ConfigError
from gm.modules.layers import GroupNorm, LayerNorm, downsampling_factor


def size_multiple(config) -> int:
    """What image sides must be multiples of for a model config: the VAE's downsampling (8 for SDXL) times 2
    per UNet downsampling (32 for SDXL)."""
    params = config.model.params
    return (downsampling_factor(params.first_stage_config.params.ddconfig.ch_mult)
            * downsampling_factor(params.network_config.params.channel_mult))


def load_weights(model: nn.Cell, path: str) -> None:
    """Load a ``.ckpt`` or official ``.safetensors`` into ``model``, tensor by tensor."""
    with open_weights(path) as reader:
        params = model_parameters(model)
        check_layout({k: p.shape for k, p in params.items()}, {k: reader.shape(k) for k in reader.keys()}, path)
        for name, param in params.items():
            param.set_data(Tensor(np.array(reader.get(name), dtype=np.float32)).astype(param.dtype))


def mixed_precision(model, level, dtype="float16"):
    """Run the UNet and the conditioner in ``dtype``, the VAE in fp32 (``--ms_amp_level``).

    "O0": everything fp32; "O2": normalisation layers stay fp32; "O3": all of the UNet and the
    conditioner in ``dtype``. Parameters stay fp32 (cast where used, so trained rows and their
    AdamW state are fp32), and the denoiser casts the UNet's output back to fp32.
    """
    if level not in AMP_LEVELS:
        raise ConfigError(f"--ms_amp_level {level!r}: expected one of {', '.join(AMP_LEVELS)}")
    if dtype not in AMP_DTYPES:
        raise ConfigError(f"--amp_dtype {dtype!r}: expected one of {', '.join(AMP_DTYPES)}")
    if level == "O0":
        return
    if dtype == "bfloat16" and ms.get_context("device_target") == "CPU":
        raise ConfigError("--amp_dtype bfloat16: MindSpore has no bfloat16 kernels on CPU (use float16, or O0)")
    for part in (model.model, model.conditioner):
        part.to_float(getattr(ms, dtype))
        if level == "O2":
            for _, cell in part.cells_and_names():
                if isinstance(cell, (LayerNorm, GroupNorm)):
                    cell.to_float(ms.float32)


def build_model(config, weights: str = None, amp_level: str = "O0", amp_dtype: str = "float16") -> nn.Cell:
    """DiffusionEngine from a config (path or loaded) and optional weights (path), all frozen,
    with :func:`mixed_precision` ``amp_level`` in ``amp_dtype``."""
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
    mixed_precision(model, amp_level, amp_dtype)
    model.set_train(False)
    return model
