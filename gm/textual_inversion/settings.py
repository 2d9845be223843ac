"""The settings of a textual-inversion run: the concepts, every training value with its default, where
each comes from (flag > training config > default, :data:`OPTIONS`), and their validation."""
from dataclasses import dataclass, field

from gm.build import size_multiple
from gm.checks import check_value
from gm.errors import UsageError
from gm.textual_inversion.buckets import check_resolution
from gm.textual_inversion.dataset import check_concept
from gm.textual_inversion.embeddings import trained_encoders
from gm.textual_inversion.templates import load_templates
from gm.textual_inversion.words import check_initializer, check_vectors, placeholder_tokens, slug

INFER_PROMPTS = {"object": "a photo of a {}", "style": "a painting in the style of {}", "face": "a photo of {}"}


@dataclass
class Concept:
    """One new word: its token, vector count, images and how it is initialised."""

    placeholder_token: str
    data_path: str
    num_vectors: int = 1
    learnable_property: str = "object"
    initializer_token: str = None
    initializer_file: str = None
    template_file: str = None
    source: str = None  # "--concepts FILE: concept N" for a concept read from a --concepts file
    initializer_file_l: str = None  # a one-encoder (SD 1.x) embedding: encoder 1's starting rows

    @property
    def name(self):
        """File-name form of the token (``<cat-toy>`` -> ``cat-toy``)."""
        return slug(self.placeholder_token)

    def label(self, key):
        """How an error names this concept's ``key``: its flag, or its --concepts file, entry and key."""
        return f"{self.source}: {key}" if self.source else f"--{key}"


@dataclass
class Settings:
    """Everything a run depends on (flags merged over the training config)."""

    config: object
    config_path: str
    weight: str
    save_path: str
    concepts: list = field(default_factory=list)
    concepts_path: str = None  # the --concepts file they came from, if any
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    total_step: int = 2000
    learning_rate: float = 5e-3
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: bool = True
    max_grad_norm: float = 1.0
    resolution: int = 1024
    center_crop: bool = True
    aspect_buckets: bool = False  # crop each image to its aspect-ratio bucket (gm.textual_inversion.buckets)
    flip_p: float = 0.5
    repeats: int = 100
    save_ckpt_interval: int = 500
    max_num_ckpt: int = None
    infer_during_train: bool = False
    infer_interval: int = 500
    infer_prompt: str = None
    infer_images: int = 2
    infer_steps: int = 40
    guidance_scale: float = 5.0
    measure_concept: str = None  # a toy-world concept (gm.toyworld.concepts.CONCEPTS) scored by the meter
    measure_samples: int = 16
    validation_samples: int = 8  # held-out samples of the validation loss per concept (0: no validation)
    best_by: str = None  # validation_loss or concept: what picks weights/best_ti.ckpt (None: best_criterion)
    snr_gamma: float = None  # min-SNR-gamma loss weights (None: the plain eps loss)
    preserve_norm: bool = False  # rescale learned rows to the ordinary words' mean norm after each step
    seed: int = 42
    log_with: str = "none"  # also write loss.csv's columns to: none or tensorboard (logs/events.out.tfevents.*)
    train_encoders: str = None  # "l", "g" or "l,g" (gm.textual_inversion.embeddings.trained_encoders)
    resume: bool = False
    overwrite: bool = False  # replace an earlier run in save_path (removed when this run starts writing)
    amp_level: str = "O0"
    amp_dtype: str = "float16"
    from_config: set = field(default_factory=set)  # names of the settings read from the training config


# Settings read from a flag or, when it is not given, the training config: {name: (flag, config key,
# what a valid value is: a key of gm.checks.RULES)}. A config without max_num_ckpt keeps every _ti.ckpt.
OPTIONS = {
    "total_step": ("--total_step", "train.total_step", "count"),
    "batch_size": ("--train_batch_size", "train.batch_size", "count"),
    "gradient_accumulation_steps": ("--gradient_accumulation_steps", None, "count"),
    "learning_rate": ("--learning_rate", "optim.learning_rate", "positive"),
    "lr_scheduler": ("--lr_scheduler", "optim.lr_scheduler", None),
    "lr_warmup_steps": ("--lr_warmup_steps", "optim.lr_warmup_steps", "natural"),
    "weight_decay": (None, "optim.weight_decay", "non_negative"),
    "betas": (None, "optim.betas", "adam_betas"),
    "eps": (None, "optim.eps", "positive"),
    "clip_grad": ("--clip_grad", None, "boolean"),
    "max_grad_norm": ("--max_grad_norm", None, "positive"),
    "resolution": ("--resolution", "train.resolution", "multiple_of_8"),
    "center_crop": ("--center_crop", "train.center_crop", "boolean"),
    "aspect_buckets": ("--aspect_buckets", "train.aspect_buckets", "boolean"),
    "flip_p": ("--flip_p", "train.flip_p", "probability"),
    "repeats": ("--repeats", "train.repeats", "count"),
    "save_ckpt_interval": ("--save_ckpt_interval", "train.save_ckpt_interval", "count"),
    "max_num_ckpt": ("--max_num_ckpt", "train.max_num_ckpt", "count"),
    "infer_interval": ("--infer_interval", "infer.interval", "count"),
    "infer_images": (None, "infer.num_images", "count"),
    "infer_steps": (None, "infer.sample_steps", "count"),
    "guidance_scale": (None, "infer.guidance_scale", "finite"),
    "measure_concept": ("--measure_concept", None, None),
    "measure_samples": (None, "infer.measure_samples", "count"),
    "seed": ("--seed", None, "natural"),
    "log_with": ("--log_with", "train.log_with", None),
    "validation_samples": ("--validation_samples", "infer.validation_samples", "natural"),
    "best_by": ("--best_by", None, None),
    "snr_gamma": ("--snr_gamma", "train.snr_gamma", "positive"),
    "preserve_norm": ("--preserve_norm", "train.preserve_norm", "boolean"),
    "train_encoders": ("--train_encoders", None, None),
}


def setting_name(s, key):
    """How an error names setting ``key``: its flag, or the training config and key it was read from."""
    flag, config_key, _ = OPTIONS[key]
    return f"{s.config_path}: {config_key}" if key in s.from_config or flag is None else flag


def check_settings(s):
    """Every value of the run, before anything is read, written or built: UsageError naming the flag,
    config key or --concepts entry of the first bad one."""
    for key, (_, _, rule) in OPTIONS.items():
        value = getattr(s, key)
        if rule and not (key in ("max_num_ckpt", "snr_gamma") and value is None):
            check_value(setting_name(s, key), value, rule)
    multiple = size_multiple(s.config)
    if s.resolution % multiple:
        raise UsageError(f"{setting_name(s, 'resolution')} {s.resolution}: this model needs a multiple of {multiple} "
                         "(the VAE's 8 times 2 per UNet downsampling)")
    if s.aspect_buckets:
        check_resolution(setting_name(s, "resolution"), s.resolution)
    if s.measure_concept is not None:
        from gm.toyworld.concepts import CONCEPTS

        if s.measure_concept not in CONCEPTS:
            raise UsageError(f"--measure_concept {s.measure_concept!r}: expected one of {', '.join(CONCEPTS)} "
                             "(concepts of the toy world, for the toy model)")
        if len(s.concepts) != 1:
            raise UsageError("--measure_concept: needs exactly one concept to train")
    if s.best_by is not None:
        if s.best_by not in ("validation_loss", "concept"):
            raise UsageError(f"--best_by {s.best_by!r}: expected validation_loss or concept")
        if s.best_by == "concept" and s.measure_concept is None:
            raise UsageError("--best_by concept: needs --measure_concept (the concept meter's score)")
        if s.best_by == "validation_loss" and not s.validation_samples:
            raise UsageError(f"--best_by validation_loss: needs {setting_name(s, 'validation_samples')} of at "
                             "least 1")
    if s.lr_scheduler not in ("constant", "cosine"):
        raise UsageError(f"{setting_name(s, 'lr_scheduler')} {s.lr_scheduler!r}: expected constant or cosine")
    if s.log_with not in ("none", "tensorboard"):
        raise UsageError(f"{setting_name(s, 'log_with')} {s.log_with!r}: expected none or tensorboard")
    if s.infer_prompt is not None:
        try:
            s.infer_prompt.format("")
            usable = "{}" in s.infer_prompt
        except (IndexError, KeyError, ValueError):
            usable = False
        if not usable:
            raise UsageError(f"--infer_prompt {s.infer_prompt!r}: expected a prompt with {{}} for the word "
                             "and no other braces")
    if not s.concepts:
        raise UsageError("--data_path: required (a folder of images), or use --demo True")
    trained_encoders(setting_name(s, "train_encoders"), s.train_encoders, s.concepts)
    for c in s.concepts:
        check_concept(c.placeholder_token, c.num_vectors, c.learnable_property, c.label)
        if c.initializer_token is not None:
            check_initializer(c.label("initializer_token"), c.initializer_token)
        if c.initializer_file and c.initializer_file_l:
            raise UsageError(f"{c.label('initializer_file_l')}: give it or {c.label('initializer_file')}, not both "
                             "(both set encoder 1's starting vectors)")
        source = f" of {c.label('template_file')} {c.template_file}" if c.template_file else ""
        templates = load_templates(c.learnable_property, c.template_file, c.label)
        prompts = [(t, f"the template {t!r}{source}") for t in templates]
        if s.infer_during_train:
            prompt = s.infer_prompt or INFER_PROMPTS[c.learnable_property]
            prompts.append((prompt, f"--infer_prompt {prompt!r}" if s.infer_prompt else
                            f"the in-training sample prompt {prompt!r}"))
        check_vectors(c.label("num_vectors"), c.num_vectors, prompts)  # captions: checked as they are read
    owner = {}
    for c in s.concepts:
        for token in placeholder_tokens(c.placeholder_token, c.num_vectors):
            if token in owner:
                other = owner[token]
                raise UsageError(f"{c.label('placeholder_token')} {c.placeholder_token!r}: its token {token!r} is "
                                 f"also a token of {other.placeholder_token!r} (with {other.num_vectors} vectors: "
                                 f"{' '.join(placeholder_tokens(other.placeholder_token, other.num_vectors))}); "
                                 "each concept needs its own word")
            owner[token] = c


def best_criterion(s):
    """What picks ``weights/best_ti.ckpt``: ``--best_by``, else the concept meter's score with
    ``--measure_concept``, else the validation loss; None when there is neither."""
    return s.best_by or ("concept" if s.measure_concept else "validation_loss" if s.validation_samples else None)
