"""Names and limits shared by the library, the CLIs and the app (MindSpore-free)."""

DEVICES = ("CPU", "GPU", "Ascend")
AMP_LEVELS = ("O0", "O2", "O3")
AMP_DTYPES = ("float16", "bfloat16")

# Sampling limits, the same in the sampling CLI and the Streamlit app: a typo (--num_rows 100000, --H 40000)
# is refused instead of filling the memory.
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 64

# The samplers make_sampler builds and the sampling CLI (--sampler) and app offer, in display order:
# name -> (label, class in gm.modules.diffusionmodules.sampling).
SAMPLERS = {
    "euler": ("Euler EDM", "EulerEDMSampler"),
    "euler_a": ("Euler ancestral", "EulerAncestralSampler"),
    "heun": ("Heun", "HeunSampler"),
    "lms": ("LMS", "LMSSampler"),
    "ddim": ("DDIM", "DDIMSampler"),
    "dpmpp_2m": ("DPM++ 2M", "DPMPP2MSampler"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "DPMPP2MSDESampler"),
}
# Noise-level spacings of SDXL's discretisation (--spacing): which training timesteps n steps visit, or
# "karras", Karras et al.'s noise levels over the training range.
SPACINGS = ("sgm", "leading", "trailing", "linspace", "karras")
