"""Textual inversion: prompt templates and the training data (images, views, sample order)."""
from gm.textual_inversion.dataset import (IMAGE_EXTENSIONS, RANDOM_CROPS, TIDataset, View, load_images,
                                          placeholder_tokens, read_caption)
from gm.textual_inversion.templates import TEMPLATES, load_templates

__all__ = ["IMAGE_EXTENSIONS", "RANDOM_CROPS", "TEMPLATES", "TIDataset", "View", "load_images",
           "load_templates", "placeholder_tokens", "read_caption"]
