"""Names and limits shared by the library, the CLIs and the app (MindSpore-free)."""

DEVICES = ("CPU", "GPU", "Ascend")
AMP_LEVELS = ("O0", "O2", "O3")
AMP_DTYPES = ("float16", "bfloat16")

# Sampling limits, the same in the sampling CLI and the Streamlit app: a typo (--num_rows 100000, --H 40000)
# is refused instead of filling the memory.
MAX_IMAGE_SIDE = 4096
MAX_IMAGES = 64
