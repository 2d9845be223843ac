"""Read pictures of the toy world with the concept meter: the shapes, colours, patterns and background they show.

    python tools/measure_concept.py runs/demo/samples/step_300.png more.png
    python tools/measure_concept.py samples/ --shape star --colour orange --pattern striped

Each file is one square picture of the world, or a grid of --size squares (the trainer's
samples/step_N.png, the model card's sample grid). One line per picture: what it shows, with
the meter's confidence per object. With --shape/--colour/--pattern/--background, also the share of
pictures that show an object with every given attribute (the concept score); exit status 0 either way.
"""
import os


import numpy as np

from gm.cli import ArgumentParser, run
from gm.errors import UsageError
from gm.textual_inversion.dataset import IMAGE_EXTENSIONS, read_image
from gm.toyworld import meter
from gm.toyworld.world import BACKGROUNDS, COLOURS, PATTERNS, SHAPES


def pictures_of(path, side):
    """[(name, picture uint8 [S, S, 3])]: a square picture, or each ``side`` square of a grid of them."""
    image = read_image(path)
    if image is None:
        raise UsageError(f"{path}: not a readable picture")
    image = np.asarray(image)
    height, width = image.shape[:2]
    if height == width:
        return [(path, image)]
    if height % side or width % side:
        raise UsageError(f"{path}: {width}x{height} is neither a square picture nor a grid of {side}x{side} ones")
    cells = [(r, c) for r in range(height // side) for c in range(width // side)]
    return [(f"{path}[{r},{c}]", image[r * side:(r + 1) * side, c * side:(c + 1) * side]) for r, c in cells]


def files_of(paths):
    """The picture files named, folders expanded to their pictures in name order."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not found:
        raise UsageError(f"{' '.join(paths)}: no pictures found")
    return found


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="pictures, grids of pictures, or folders of them")
    parser.add_argument("--size", type=int, default=64, help="side of each picture in a grid (the toy model's: 64)")
    parser.add_argument("--shape", choices=SHAPES)
    parser.add_argument("--colour", choices=list(COLOURS))
    parser.add_argument("--pattern", choices=PATTERNS)
    parser.add_argument("--background", choices=list(BACKGROUNDS))
    args = parser.parse_args()
    wanted = {k: getattr(args, k) for k in ("shape", "colour", "pattern", "background") if getattr(args, k)}
    shown = []
    for path in files_of(args.paths):
        for name, picture in pictures_of(path, args.size):
            reading = meter.read(picture)
            scores = "; ".join(f"{o.shape or '?'} {o.shape_score:.2f}, {o.colour or '?'} {o.colour_score:.2f}, "
                               f"{o.pattern or '?'} {o.pattern_score:.2f}" for o in reading.objects)
            print(f"{name}: {reading.describe()}" + (f"  ({scores})" if scores else ""))
            shown.append(reading.shows(**wanted))
    if wanted:
        asked = ", ".join(f"{k} {v}" for k, v in wanted.items())
        print(f"concept score ({asked}): {100 * np.mean(shown):.0f} % of {len(shown)} pictures")


if __name__ == "__main__":
    run(main)
