"""Textual-inversion data: templates, image loading, views (crops, flips, SDXL sizes), sample order."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from gm.errors import UsageError
from gm.textual_inversion import TEMPLATES, TIDataset, load_images, load_templates
from gm.textual_inversion.dataset import RANDOM_CROPS

from tools import make_demo_dataset

TOKEN = "<cat-toy>"


def noise_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)


def make_folder(tmp_path, sizes, name="data"):
    """A folder of noise PNGs ``img_i.png`` with the given (w, h) sizes."""
    folder = tmp_path / name
    folder.mkdir()
    for i, (w, h) in enumerate(sizes):
        noise_image(w, h, seed=i).save(folder / f"img_{i}.png")
    return str(folder)


def reference_view(path, resolution, top, left, flipped):
    """Reference as diffusers' SDXL script: resize short side (long side truncated, torchvision's
    Resize rule), mirror the resized image if flipped, crop at (top, left), scale to [-1, 1]."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    s = resolution / min(w, h)
    size = (resolution, int(resolution * h / w)) if w <= h else (int(resolution * w / h), resolution)
    if s != 1:
        image = image.resize(size, Image.BICUBIC)
    if flipped:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    crop = np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.float32)
    return crop.transpose(2, 0, 1) / 127.5 - 1


# ---------------------------------------------------------------- templates

def test_builtin_templates():
    assert set(TEMPLATES) == {"object", "style", "face"}
    for prop, templates in TEMPLATES.items():
        assert len(templates) >= 15 and all("{}" in t for t in templates), prop
        assert load_templates(prop) == templates
    assert "a photo of a {}" in TEMPLATES["object"]
    assert "a painting in the style of {}" in TEMPLATES["style"]


def test_template_errors(tmp_path):
    with pytest.raises(UsageError, match="--learnable_property 'person'.*object, style, face"):
        load_templates("person")
    missing = tmp_path / "nope.txt"
    with pytest.raises(UsageError, match="--template_file .*nope.txt: no such file"):
        load_templates("object", str(missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UsageError, match="empty.txt: no templates"):
        load_templates("object", str(empty))
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of {}\na photo of nothing\n")
    with pytest.raises(UsageError, match="bad.txt: line 2 has no"):
        load_templates("style", str(bad))
    good = tmp_path / "good.txt"
    good.write_text("a {} toy\n\n  a {} in a box  \n")
    assert load_templates("face", str(good)) == ["a {} toy", "a {} in a box"]


# ---------------------------------------------------------------- image loading

def test_load_images_modes_order_and_extensions(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent black
    Image.fromarray(rgba, "RGBA").save(folder / "a_rgba.PNG")
    Image.fromarray(np.full((8, 8), 100, np.uint8), "L").save(folder / "b_grey.JPG", quality=100)
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "c_16bit.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(folder / "d_palette.bmp")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "e_cmyk.jpg", quality=100)
    noise_image(8, 8).save(folder / "f_noise.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image")
    noise_image(8, 8).save(folder / ".hidden.png")
    (folder / "sub.png").mkdir()

    loaded = load_images(str(folder))
    names = [os.path.basename(p) for p, _ in loaded]
    assert names == ["a_rgba.PNG", "b_grey.JPG", "c_16bit.png", "d_palette.bmp", "e_cmyk.jpg", "f_noise.webp"]
    assert all(im.mode == "RGB" and im.size == (8, 8) for _, im in loaded)
    arrays = {n: np.asarray(im) for n, (_, im) in zip(names, loaded)}
    assert (arrays["a_rgba.PNG"][:4] == (255, 0, 0)).all()
    assert (arrays["a_rgba.PNG"][4:] == 255).all()  # transparency over white
    assert np.abs(arrays["b_grey.JPG"].astype(int) - 100).max() <= 2
    assert (arrays["c_16bit.png"] == 128).all()  # 32896 / 257
    assert (arrays["d_palette.bmp"] == (10, 200, 30)).all()
    cmyk = arrays["e_cmyk.jpg"].astype(int)
    assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 50  # magenta+yellow ink -> red
    assert (arrays["f_noise.webp"] == np.asarray(noise_image(8, 8))).all()


def test_palette_with_transparency_and_greyscale_alpha(tmp_path):
    folder = tmp_path / "alpha"
    folder.mkdir()
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(folder / "p.png", transparency=0)
    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.full((4, 4), 0, np.uint8)], -1), "LA")
    la.save(folder / "q.png")
    (_, p_rgb), (_, la_rgb) = load_images(str(folder))
    p_arr = np.asarray(p_rgb)
    assert tuple(p_arr[0, 0]) == (0, 0, 255) and (p_arr[1:] == 255).all()
    assert (np.asarray(la_rgb) == 255).all()


def test_corrupt_image_is_skipped_with_warning(tmp_path, capsys):
    folder = make_folder(tmp_path, [(16, 16), (16, 16)])
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    noise_image(64, 64).save(os.path.join(folder, "truncated.png"))
    with open(os.path.join(folder, "truncated.png"), "r+b") as f:
        f.truncate(200)
    loaded = load_images(folder)
    assert [os.path.basename(p) for p, _ in loaded] == ["img_0.png", "img_1.png"]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: --data_path: skipping ") for w in warnings), warnings
    assert "broken.jpg: not a readable image" in warnings[0] and "truncated.png: not a readable image" in warnings[1]


@pytest.mark.parametrize("case", ["missing", "file", "empty", "only_text", "unreadable"])
def test_load_images_errors(tmp_path, case):
    target = tmp_path / "data"
    if case == "file":
        target.write_text("x")
    elif case != "missing":
        target.mkdir()
    if case == "only_text":
        (target / "a.txt").write_text("caption without image {}")
    if case == "unreadable":
        (target / "a.png").write_bytes(b"garbage")
        (target / "b.jpg").write_bytes(b"")
    with pytest.raises(UsageError) as err:
        load_images(str(target))
    message = str(err.value)
    assert message.startswith(f"--data_path {target}:") and "\n" not in message
    expected = {"missing": "no such folder", "file": "not a folder", "empty": "no images",
                "only_text": "no images", "unreadable": "none of its 2 image files can be used"}[case]
    assert expected in message


@pytest.mark.parametrize("size,usable", [
    ((4000, 10), False), ((10, 4000), False), ((65, 16), False), ((64, 16), True), ((16, 64), True),
    ((7, 7), False), ((8, 8), True), ((8, 32), True), ((640, 480), True),
])
def test_extreme_and_tiny_images_are_skipped_by_one_rule(tmp_path, capsys, size, usable):
    """At --resolution 64: longer than 4:1 or a short side under 64 / 8 = 8 pixels is skipped with one warning
    line naming the file (a 4000x10 image would otherwise become 25600x64, at 1024 px 409600x1024)."""
    folder = make_folder(tmp_path, [(16, 16), size])
    ds = TIDataset(folder, TOKEN, 1, "object", 64)
    err = capsys.readouterr().err
    assert ds.num_images == (2 if usable else 1)
    if usable:
        assert err == ""
    else:
        (line,) = err.splitlines()
        assert line.startswith(f"warning: --data_path: skipping {os.path.join(folder, 'img_1.png')}: "
                               f"{size[0]}x{size[1]} is "), line
        assert ("longer than 4:1" if max(size) > 4 * min(size) else "too small for --resolution 64") in line


def test_a_folder_of_only_unusable_images_is_one_error(tmp_path, capsys):
    folder = make_folder(tmp_path, [(4000, 10), (3, 3)])
    with pytest.raises(UsageError, match=f"--data_path {folder}: none of its 2 image files can be used"):
        TIDataset(folder, TOKEN, 1, "object", 64)
    assert len(capsys.readouterr().err.splitlines()) == 2


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs, flag", [
    ({"resolution": 100}, "--resolution 100"),
    ({"resolution": 0}, "--resolution 0"),
    ({"resolution": -64}, "--resolution -64"),
    ({"num_vectors": 0}, "--num_vectors 0"),
    ({"learnable_property": "animal"}, "--learnable_property 'animal'"),
    ({"repeats": 0}, "--repeats 0"),
    ({"flip_p": 1.5}, "--flip_p 1.5"),
    ({"placeholder_token": "cat toy"}, "--placeholder_token"),
    ({"placeholder_token": ""}, "--placeholder_token"),
])
def test_argument_errors(tmp_path, kwargs, flag):
    folder = make_folder(tmp_path, [(16, 16)])
    args = dict(placeholder_token=TOKEN, num_vectors=1, learnable_property="object", resolution=16)
    args.update(kwargs)
    with pytest.raises(UsageError) as err:
        TIDataset(folder, **args)
    assert str(err.value).startswith(flag)
    if "learnable_property" in kwargs:
        assert "object, style, face" in str(err.value)


def test_missing_folder_through_dataset(tmp_path):
    with pytest.raises(UsageError, match="--data_path .*nowhere: no such folder"):
        TIDataset(str(tmp_path / "nowhere"), TOKEN, 1, "object", 64)


def test_expanded_placeholder(tmp_path):
    folder = make_folder(tmp_path, [(16, 16)])
    ds = TIDataset(folder, TOKEN, 3, "object", 16)
    assert ds.placeholder_tokens == ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"]
    assert ds.expanded_placeholder == "<cat-toy> <cat-toy>_1 <cat-toy>_2"
    assert TIDataset(folder, TOKEN, 1, "object", 16).expanded_placeholder == "<cat-toy>"


# ---------------------------------------------------------------- views

def test_center_crop_views_and_coordinates(tmp_path):
    # (w, h): 200x100 -> 128x64; 50x90 -> 64x115; 60x100 -> 64x106 (106.67 truncated, as torchvision);
    # 131x64: no resize, odd margin
    folder = make_folder(tmp_path, [(200, 100), (50, 90), (60, 100), (131, 64)])
    ds = TIDataset(folder, TOKEN, 1, "object", 64, center_crop=True, flip_p=0.5)
    assert len(ds.views) == 8
    expect = [
        ((100, 200), (0, 32), (0, 32)),
        ((90, 50), (26, 0), (26, 0)),
        ((100, 60), (21, 0), (21, 0)),
        ((64, 131), (0, 34), (0, 34)),  # round(67 / 2) = 34, also for the flipped image (diffusers)
    ]
    for i, (orig, crop, crop_flipped) in enumerate(expect):
        plain, mirrored = ds.views[2 * i], ds.views[2 * i + 1]
        assert (plain.image_index, plain.flipped) == (i, False)
        assert (mirrored.image_index, mirrored.flipped) == (i, True)
        assert plain.original_size == orig == mirrored.original_size
        assert plain.crop_coords_top_left == crop and mirrored.crop_coords_top_left == crop_flipped
        assert plain.target_size == (64, 64)
        for view in (plain, mirrored):
            px = view.pixels
            assert px.dtype == np.float32 and px.shape == (3, 64, 64)
            assert px.min() >= -1 and px.max() <= 1
            ref = reference_view(ds.paths[i], 64, *view.crop_coords_top_left, view.flipped)
            assert np.abs(px - ref).max() < 1e-6
    # even margin: the mirrored center crop is exactly the mirror of the plain one
    assert np.array_equal(ds.views[1].pixels, ds.views[0].pixels[:, :, ::-1])
    # odd margin (131 - 64 = 67): diffusers' flip-then-center-crop is shifted by one pixel
    assert not np.array_equal(ds.views[7].pixels, ds.views[6].pixels[:, :, ::-1])


def test_flip_p_controls_which_views_exist(tmp_path):
    folder = make_folder(tmp_path, [(40, 32), (32, 32)])
    only_plain = TIDataset(folder, TOKEN, 1, "object", 32, flip_p=0.0)
    only_flipped = TIDataset(folder, TOKEN, 1, "object", 32, flip_p=1.0)
    assert [v.flipped for v in only_plain.views] == [False, False]
    assert [v.flipped for v in only_flipped.views] == [True, True]
    assert all(not only_plain.views[v].flipped for v, _ in only_plain.sample(0, 8))
    assert all(only_flipped.views[v].flipped for v, _ in only_flipped.sample(0, 8))


def test_random_crop_views(tmp_path):
    folder = make_folder(tmp_path, [(120, 64), (64, 64), (64, 66)])  # 2nd: one position, 3rd: three
    ds = TIDataset(folder, TOKEN, 1, "style", 64, center_crop=False, flip_p=0.5, seed=7)
    per_image = [sum(v.image_index == i for v in ds.views) for i in range(3)]
    assert per_image == [2 * RANDOM_CROPS, 2, 6]
    for i, (w, h) in enumerate([(120, 64), (64, 64), (64, 66)]):
        plain = [v for v in ds.views if v.image_index == i and not v.flipped]
        flipped = [v for v in ds.views if v.image_index == i and v.flipped]
        offsets = [v.crop_coords_top_left for v in plain]
        assert len(set(offsets)) == len(offsets)
        for p, f in zip(plain, flipped):
            top, left = p.crop_coords_top_left
            assert 0 <= top <= h - 64 and 0 <= left <= w - 64
            assert f.crop_index == p.crop_index and f.crop_coords_top_left == (top, w - left - 64)
            assert np.array_equal(f.pixels, p.pixels[:, :, ::-1])
            for view in (p, f):
                ref = reference_view(ds.paths[i], 64, *view.crop_coords_top_left, view.flipped)
                assert np.abs(view.pixels - ref).max() < 1e-6
    assert sorted(v.crop_coords_top_left for v in ds.views if v.image_index == 2 and not v.flipped) == [
        (0, 0), (1, 0), (2, 0)]
    again = TIDataset(folder, TOKEN, 1, "style", 64, center_crop=False, flip_p=0.5, seed=7)
    other = TIDataset(folder, TOKEN, 1, "style", 64, center_crop=False, flip_p=0.5, seed=8)
    coords = [v.crop_coords_top_left for v in ds.views]
    assert coords == [v.crop_coords_top_left for v in again.views]
    assert coords != [v.crop_coords_top_left for v in other.views]


def test_size_conditioning(tmp_path):
    folder = make_folder(tmp_path, [(200, 100)])
    ds = TIDataset(folder, TOKEN, 1, "object", 64)
    cond = ds.size_conditioning([1, 0, 1])
    assert cond["original_size_as_tuple"].tolist() == [[100, 200]] * 3
    assert cond["crop_coords_top_left"].tolist() == [[0, 32]] * 3
    assert cond["target_size_as_tuple"].tolist() == [[64, 64]] * 3
    assert all(a.dtype == np.float32 for a in cond.values())


# ---------------------------------------------------------------- sample order

def test_sample_is_deterministic_and_resumable(tmp_path):
    folder = make_folder(tmp_path, [(40, 32), (32, 48), (32, 32)])
    kwargs = dict(resolution=32, center_crop=False, repeats=3, seed=5)
    a = TIDataset(folder, TOKEN, 2, "object", **kwargs)
    b = TIDataset(folder, TOKEN, 2, "object", **kwargs)
    run_a = [a.sample(step, 2) for step in range(20)]
    resumed = [b.sample(step, 2) for step in range(12, 20)]
    assert resumed == run_a[12:]
    assert [b.sample(step, 2) for step in range(12)] == run_a[:12]
    c = TIDataset(folder, TOKEN, 2, "object", **dict(kwargs, seed=6))
    assert [c.sample(step, 2) for step in range(20)] != run_a


def test_epochs_are_permutations_of_images_times_repeats(tmp_path):
    folder = make_folder(tmp_path, [(32, 32)] * 4)
    ds = TIDataset(folder, TOKEN, 1, "object", 32, repeats=5, seed=1)
    assert ds.epoch_length == 20 and ds.steps_per_epoch(3) == 7 and ds.steps_per_epoch(2, 2) == 5
    order = [ds.sample_at(i)[0] for i in range(40)]
    epochs = [[ds.views[v].image_index for v in order[e * 20:(e + 1) * 20]] for e in range(2)]
    for images in epochs:
        assert sorted(images) == sorted(list(range(4)) * 5)
    assert epochs[0] != epochs[1]


def test_shards_split_the_global_batch(tmp_path):
    folder = make_folder(tmp_path, [(48, 32), (32, 32), (32, 40)])
    ds = TIDataset(folder, TOKEN, 1, "face", 32, center_crop=False, repeats=2, seed=3)
    for step in range(10):
        single = ds.sample(step, 2)
        assert [ds.sample(step, 1, rank=r, world_size=2)[0] for r in range(2)] == single
        twelve = ds.sample(step, 12)
        assert sum((ds.sample(step, 3, rank=r, world_size=4) for r in range(4)), []) == twelve
    assert ds.sample(0, 2, rank=1, world_size=2) != ds.sample(0, 2, rank=0, world_size=2)
    with pytest.raises(ValueError):
        ds.sample(0, 1, rank=2, world_size=2)


def test_template_prompts_flips_and_crops_are_mixed(tmp_path):
    folder = make_folder(tmp_path, [(48, 32), (32, 40)])
    ds = TIDataset(folder, TOKEN, 2, "style", 32, center_crop=False, flip_p=0.3, seed=11)
    samples = ds.sample(0, 3000)
    expanded = [t.replace("{}", "<cat-toy> <cat-toy>_1") for t in TEMPLATES["style"]]
    prompts = [p for _, p in samples]
    assert set(prompts) == set(expanded)
    flipped = np.mean([ds.views[v].flipped for v, _ in samples])
    assert 0.27 < flipped < 0.33
    assert {v for v, _ in samples} == set(range(len(ds.views)))


def test_template_file_prompts(tmp_path):
    folder = make_folder(tmp_path, [(32, 32)])
    tf = tmp_path / "t.txt"
    tf.write_text("a {} on a shelf\nmy {}\n")
    ds = TIDataset(folder, TOKEN, 1, "object", 32, template_file=str(tf))
    assert {p for _, p in ds.sample(0, 50)} == {"a <cat-toy> on a shelf", "my <cat-toy>"}


# ---------------------------------------------------------------- captions

def test_captions(tmp_path):
    folder = make_folder(tmp_path, [(32, 32)] * 3)
    with open(os.path.join(folder, "img_0.txt"), "w") as f:
        f.write("a photo of <cat-toy> on the grass\n")
    with open(os.path.join(folder, "img_1.TXT"), "w") as f:
        f.write("{} in the snow\n\n  a close-up of {}, sharp  \n")
    ds = TIDataset(folder, TOKEN, 2, "object", 32, flip_p=0.0, repeats=10)
    assert ds.captions == [["a photo of {} on the grass"],
                           ["{} in the snow", "a close-up of {}, sharp"], None]
    expanded = "<cat-toy> <cat-toy>_1"
    by_image = {0: set(), 1: set(), 2: set()}
    for view, prompt in ds.sample(0, 300):
        by_image[ds.views[view].image_index].add(prompt)
    assert by_image[0] == {f"a photo of {expanded} on the grass"}
    assert by_image[1] == {f"{expanded} in the snow", f"a close-up of {expanded}, sharp"}
    assert by_image[2] <= {t.replace("{}", expanded) for t in TEMPLATES["object"]} and len(by_image[2]) > 5


@pytest.mark.parametrize("text, expected", [
    ("a photo of my toy\n", "line 1 mentions neither"),
    ("a photo of {}\na photo of a cat\n", "line 2 mentions neither"),
    ("\n \n", "is empty"),
])
def test_caption_errors(tmp_path, text, expected):
    folder = make_folder(tmp_path, [(32, 32)] * 2)
    with open(os.path.join(folder, "img_1.txt"), "w") as f:
        f.write(text)
    with pytest.raises(UsageError) as err:
        TIDataset(folder, TOKEN, 1, "object", 32)
    assert "img_1.txt" in str(err.value) and expected in str(err.value)


# ---------------------------------------------------------------- vectors that fit the prompt

def test_num_vectors_is_bounded_by_the_longest_prompt(tmp_path):
    """A word of N vectors is N tokens of CLIP's 75 (77 minus start and end): N is bounded by the longest
    template or caption, so no vector is cut off (and silently left untrained)."""
    from gm.textual_inversion.words import other_tokens

    longest = max(TEMPLATES["object"], key=other_tokens)
    limit = 75 - other_tokens(longest)
    assert (longest, limit) == ("a close-up photo of a {}", 68)
    folder = make_folder(tmp_path, [(16, 16)])
    assert len(TIDataset(folder, TOKEN, limit, "object", 16).placeholder_tokens) == limit
    for n in (limit + 1, 80, 100000):
        with pytest.raises(UsageError) as err:
            TIDataset(folder, TOKEN, n, "object", 16)
        assert str(err.value).startswith(f"--num_vectors {n}: at most {limit} vectors fit (CLIP reads 77 tokens, "
                                         f"2 of them its start and end markers, and the template {longest!r} takes 7")
    with open(os.path.join(folder, "img_0.txt"), "w") as f:
        f.write("a {} and " + "word " * 60 + "\n")  # 62 other tokens: 13 vectors fit
    with pytest.raises(UsageError, match=r"--num_vectors 14: at most 13 vectors fit .* the caption 'a \{\} and "
                                         r"word .*' of .*img_0.png takes 62 more"):
        TIDataset(folder, TOKEN, 14, "object", 16)
    with open(os.path.join(folder, "img_0.txt"), "w") as f:
        f.write("{} " + "word " * 75 + "\n")
    with pytest.raises(UsageError, match=r"--num_vectors 1: the caption .* is 75 tokens long without the word, so "
                                         "the word does not fit"):
        TIDataset(folder, TOKEN, 1, "object", 16)
    os.remove(os.path.join(folder, "img_0.txt"))
    tf = tmp_path / "t.txt"
    tf.write_text("{} and {}\n")  # the word twice: 2 N tokens
    TIDataset(folder, TOKEN, 37, "object", 16, template_file=str(tf))
    with pytest.raises(UsageError, match=f"at most 37 vectors fit .* the template '{{}} and {{}}' of "
                                         f"--template_file {tf} takes 1 more"):
        TIDataset(folder, TOKEN, 38, "object", 16, template_file=str(tf))


# ---------------------------------------------------------------- demo data

def test_demo_style_dataset_is_shipped_and_reproducible():
    folder = os.path.join(ROOT, "datasets", "demo_style")
    loaded = load_images(folder)
    assert len(loaded) == 6
    for i, (path, image) in enumerate(loaded):
        assert os.path.basename(path) == f"style_{i:02d}.png" and image.size == (128, 128)
        assert os.path.getsize(path) < 40_000
        diff = np.abs(np.asarray(make_demo_dataset.style_image(i), np.int16) - np.asarray(image, np.int16))
        assert diff.max() <= 2, (path, diff.max())
    images = np.stack([np.asarray(im, np.float32) for _, im in loaded])
    assert images.std(axis=0).mean() > 20  # six different pictures, not one repeated
    ds = TIDataset(folder, TOKEN, 1, "style", 128)
    assert len(ds.views) == 12 and ds.views[0].original_size == (128, 128)


@pytest.mark.parametrize("folder, name", [("demo_toy", "toy_star"), ("toy_dotted", "toy_dotted")])
def test_toy_concept_datasets_are_the_worlds_pictures(folder, name):
    """The shipped concept folders are exactly what the toy world draws for the concept (captions too)."""
    from gm.toyworld.concepts import CONCEPTS, training_set

    loaded = load_images(os.path.join(ROOT, "datasets", folder))
    expected = training_set(CONCEPTS[name])
    assert len(loaded) == len(expected) == 5
    for (path, image), (picture, caption) in zip(loaded, expected):
        assert np.array_equal(np.asarray(image), picture), path
        text = path[:-4] + ".txt"
        assert (open(text).read().strip() == caption) if folder == "toy_dotted" else not os.path.exists(text)
