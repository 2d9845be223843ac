"""Prompt templates for textual inversion; ``{}`` marks where the placeholder goes."""
import os

from gm.errors import UsageError

OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
    "a snapshot of a {} on a table",
    "a {} seen from the side",
]

STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
    "an illustration in the style of {}",
    "artwork in the style of {}",
    "a drawing in the style of {}",
]

FACE_TEMPLATES = [
    "a photo of {}",
    "a portrait of {}",
    "a close-up photo of {}",
    "a photo of the face of {}",
    "a headshot of {}",
    "a cropped photo of {}",
    "a bright photo of {}",
    "a dark photo of {}",
    "a good photo of {}",
    "a candid photo of {}",
    "a portrait photo of {} smiling",
    "a photo of {} looking at the camera",
    "a close-up portrait of {}",
    "a studio portrait of {}",
    "a picture of {}",
    "a selfie of {}",
]

TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES, "face": FACE_TEMPLATES}


def check_property(learnable_property, name="--learnable_property"):
    """Raise UsageError (naming the value ``name``) unless ``learnable_property`` is one of TEMPLATES' keys."""
    if not isinstance(learnable_property, str) or learnable_property not in TEMPLATES:
        raise UsageError(f"{name} {learnable_property!r}: expected one of "
                         f"{', '.join(TEMPLATES)}")


def read_template_file(path, name="--template_file"):
    """Templates from a text file: one per line, blank lines skipped, each must contain ``{}``."""
    if not os.path.isfile(path):
        raise UsageError(f"{name} {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{name} {path}: cannot read it as UTF-8 text ({e})") from e
    templates = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        if "{}" not in line:
            raise UsageError(f"{name} {path}: line {number} has no {{}} placeholder: {line!r}")
        templates.append(line)
    if not templates:
        raise UsageError(f"{name} {path}: no templates (expected one per line, each with {{}})")
    return templates


def load_templates(learnable_property, template_file=None, name="--{}".format):
    """The template list for a property (object, style, face), or the file's templates if given;
    ``name(key)`` is how an error names ``learnable_property`` or ``template_file`` (default: its flag)."""
    check_property(learnable_property, name("learnable_property"))
    if template_file is not None:
        return read_template_file(template_file, name("template_file"))
    return list(TEMPLATES[learnable_property])
