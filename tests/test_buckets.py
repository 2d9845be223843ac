"""Aspect-ratio buckets: the bucket list, each image's bucket and crop, one bucket per batch, resumable and
rank-split sampling, too-small images, and one bucketed training run."""
import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_main
from gm.errors import UsageError
from gm.textual_inversion.buckets import bucket_sizes, cover_size, nearest_bucket
from gm.textual_inversion.dataset import TIDataset

TOKEN = "<toy>"
TINY_TRAIN = os.path.join(ROOT, "configs", "training", "sd_xl_tiny_finetune_textual_inversion.yaml")


def make_folder(tmp_path, sizes, name="data"):
    """A folder of noise PNGs ``img_i.png`` of the given (w, h) sizes."""
    folder = tmp_path / name
    folder.mkdir()
    for i, (w, h) in enumerate(sizes):
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"img_{i}.png")
    return str(folder)


def bucketed(folder, **kwargs):
    return TIDataset(folder, TOKEN, aspect_buckets=True, **{"resolution": 128, "repeats": 5, "seed": 3, **kwargs})


@pytest.mark.parametrize("resolution, count", [(1024, 17), (512, 9), (128, 3)])
def test_bucket_list(resolution, count):
    buckets = bucket_sizes(resolution)
    assert len(buckets) == count and len(set(buckets)) == count
    assert (resolution, resolution) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0
        assert h * w <= resolution ** 2 and max(h, w) <= 4 * min(h, w)
        assert (h + 64) * w > resolution ** 2 and h * (w + 64) > resolution ** 2  # the largest of its shape
    assert [w / h for h, w in buckets] == sorted(w / h for h, w in buckets)
    assert buckets[0] == (4 * resolution // 2, resolution // 2) == buckets[-1][::-1]


@pytest.mark.parametrize("size, bucket", [
    ((1000, 1000), (1024, 1024)), ((2000, 1000), (704, 1472)), ((1000, 2000), (1472, 704)),
    ((4000, 1000), (512, 2048)), ((1200, 1000), (960, 1088)), ((16000, 1000), (512, 2048)),
    ((1066, 1000), (960, 1088)),  # nearer 1088/960 than 1 in log ratio (in the plain ratio: nearer 1)
])
def test_nearest_bucket_by_log_aspect(size, bucket):
    buckets = bucket_sizes(1024)
    assert nearest_bucket(*size, buckets) == bucket
    distance = [abs(math.log(w / h) - math.log(size[0] / size[1])) for h, w in buckets]
    assert distance[buckets.index(bucket)] == min(distance)


def test_cover_size_covers_with_one_side_exact():
    assert cover_size(300, 100, (64, 256)) == (256, 85)  # width bound, height truncated
    assert cover_size(100, 300, (256, 64)) == (85, 256)
    assert cover_size(100, 100, (64, 256)) == (256, 256)
    assert cover_size(500, 100, (64, 256)) == (320, 64)  # height bound
    assert cover_size(160, 100, (128, 128)) == (204, 128)  # the square: the short side to the resolution


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_center_crop_to_the_bucket_and_its_conditioning(tmp_path, flip_p):
    folder = make_folder(tmp_path, [(300, 100), (100, 110)])
    ds = bucketed(folder, flip_p=flip_p)
    assert ds.buckets == [(64, 256), (128, 128)]
    wide, square = ds.views
    assert (wide.original_size, wide.crop_coords_top_left, wide.target_size) == ((100, 300), (10, 0), (64, 256))
    assert (square.original_size, square.crop_coords_top_left, square.target_size) == ((110, 100), (6, 0),
                                                                                          (128, 128))
    image = Image.open(os.path.join(folder, "img_0.png")).resize((256, 85), Image.BICUBIC)
    if flip_p:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    expected = np.asarray(image.crop((0, 10, 256, 74)), np.float32).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(wide.pixels, expected, atol=1e-6)
    cond = ds.size_conditioning([0, 1])
    np.testing.assert_array_equal(cond["target_size_as_tuple"], [[64, 256], [128, 128]])
    np.testing.assert_array_equal(cond["crop_coords_top_left"], [[10, 0], [6, 0]])
    np.testing.assert_array_equal(cond["original_size_as_tuple"], [[100, 300], [110, 100]])


def test_random_crops_stay_in_the_bucket_and_mirror(tmp_path):
    ds = bucketed(make_folder(tmp_path, [(400, 200)]), center_crop=False, flip_p=0.5, resolution=256)
    assert ds.buckets == [(192, 320)]
    width = 384  # 400x200 covers 320x192 at 384x192
    pairs = {}
    for view in ds.views:
        assert view.pixels.shape == (3, 192, 320)
        pairs.setdefault(view.crop_index, {})[view.flipped] = view
    assert len(pairs) == 4
    for pair in pairs.values():
        top, left = pair[False].crop_coords_top_left
        assert top == 0 and pair[True].crop_coords_top_left == (0, width - left - 320)
        np.testing.assert_array_equal(pair[True].pixels, pair[False].pixels[:, :, ::-1])


def test_square_crops_stay_the_default(tmp_path):
    folder = make_folder(tmp_path, [(300, 100), (100, 110)])
    ds = TIDataset(folder, TOKEN, resolution=128)
    assert {v.target_size for v in ds.views} == {(128, 128)} and ds.buckets == [(128, 128)] * 2


def mixed(tmp_path):
    """Five images in the three buckets at 128 (wide, tall, square)."""
    return bucketed(make_folder(tmp_path, [(300, 100), (100, 300), (120, 110), (400, 110), (130, 140)]))


def test_every_batch_holds_one_bucket(tmp_path):
    ds = mixed(tmp_path)
    assert sorted(ds.buckets) == [(64, 256), (64, 256), (128, 128), (128, 128), (256, 64)]
    steps = ds.steps_per_epoch(3, 2)
    assert steps == 2 + 2 + 1  # per bucket: ceil(images x 5 repeats / 6)
    seen = []
    for step in range(2 * steps):
        views = [ds.views[v] for rank in (0, 1) for v, _ in ds.sample(step, 3, rank, 2)]
        assert len({v.target_size for v in views}) == 1, step
        seen += [v.image_index for v in views]
    first = seen[:6 * steps]
    assert all(first.count(i) >= 5 for i in range(5))  # an epoch shows every image its repeats at least
    assert len({ds.views[v].target_size for step in range(steps) for v, _ in ds.sample(step, 3, 0, 2)}) == 3


def test_sampling_resumes_exactly_and_splits_over_ranks(tmp_path):
    ds = mixed(tmp_path)
    whole = [ds.sample(step, 4) for step in range(20)]
    again = bucketed(os.path.dirname(ds.paths[0]))
    assert [again.sample(step, 4) for step in range(12, 20)] == whole[12:]  # a fresh object from step 12
    for world in (2, 4):
        split = [sum((ds.sample(step, 4 // world, rank, world) for rank in range(world)), []) for step in range(20)]
        assert split == whole, world
    other = bucketed(os.path.dirname(ds.paths[0]), seed=4)
    assert [other.sample(step, 4) for step in range(20)] != whole


def test_too_small_image_is_skipped_with_a_warning(tmp_path, capsys):
    """10x30 maps to the 64x256 bucket and would be enlarged 256 / 30 = 8.5 times (more than 8): skipped;
    12x40 (6.4 times) is kept."""
    folder = make_folder(tmp_path, [(130, 140), (10, 30), (12, 40)])
    ds = bucketed(folder)
    assert ds.num_images == 2 and ds.buckets == [(128, 128), (256, 64)]
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"warning: --data_path: skipping {os.path.join(folder, 'img_1.png')}: 10x30 is too small for "
                    "its 64x256 bucket at --resolution 128 (it would be enlarged 8.5 times, more than 8)")


def test_only_too_small_images_are_one_error(tmp_path, capsys):
    folder = make_folder(tmp_path, [(10, 30), (15, 15)])
    with pytest.raises(UsageError, match=f"--data_path {folder}: none of its 2 image files can be used"):
        bucketed(folder)
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_the_setting_is_flag_over_config_over_default(tmp_path):
    from gm.textual_inversion.settings import check_settings
    from train_textual_inversion import parser, settings

    config = tmp_path / "buckets.yaml"
    config.write_text(f"base: {TINY_TRAIN}\ntrain:\n  aspect_buckets: true\n  resolution: 96\n")
    read = lambda *flags: settings(parser().parse_args(["--data_path", str(tmp_path), *flags]))
    assert read("--config", TINY_TRAIN).aspect_buckets is False
    from_config = read("--config", str(config))
    assert from_config.aspect_buckets is True and "aspect_buckets" in from_config.from_config
    with pytest.raises(UsageError, match=f"^{config}: train.resolution 96: --aspect_buckets needs a multiple of 64"):
        check_settings(from_config)
    flag = read("--config", str(config), "--aspect_buckets", "False")
    assert flag.aspect_buckets is False
    check_settings(flag)


@pytest.mark.parametrize("case", ["too_small", "resolution"])
def test_command_line_errors_are_one_line(case, tiny_checkpoint, tmp_path, capsys, keep_mode):
    from train_textual_inversion import main

    sizes, resolution = ([(10, 30), (15, 15)], "128") if case == "too_small" else ([(300, 100)], "96")
    folder = make_folder(tmp_path, sizes)
    code, out, err = run_main(capsys, main, "--config", TINY_TRAIN, "--weight", tiny_checkpoint, "--data_path",
                              folder, "--save_path", str(tmp_path / "run"), "--resolution", resolution,
                              "--aspect_buckets", "True", "--ms_mode", "1", "--total_step", "1")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    expected = (f"error: --data_path {folder}: none of its 2 image files" if case == "too_small" else
                "error: --resolution 96: --aspect_buckets needs a multiple of 64")
    assert errors[0].startswith(expected), errors[0]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_bucketed_training_runs_in_graph_mode(tiny_checkpoint, tmp_path, capsys, keep_mode):
    """Three images in three buckets at 128, batch 2, graph mode: every step trains, validation runs per
    bucket, the word's vectors are saved."""
    from train_textual_inversion import main

    folder = make_folder(tmp_path, [(256, 96), (96, 200), (150, 140)])
    save = str(tmp_path / "run")
    code, out, err = run_main(capsys, main, "--config", TINY_TRAIN, "--weight", tiny_checkpoint, "--data_path",
                              folder, "--save_path", save, "--resolution", "128", "--aspect_buckets", "True",
                              "--ms_mode", "0", "--train_batch_size", "2", "--total_step", "4", "--repeats", "2",
                              "--infer_interval", "2", "--validation_samples", "3", "--compile_cache", "off")
    assert code == 0, err[-3000:]
    assert "aspect-ratio buckets 256x64, 128x128, 64x256" in out
    with open(os.path.join(save, "loss.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert all(math.isfinite(float(rows[i]["validation_loss"])) for i in (1, 3))
    assert os.path.isfile(os.path.join(save, "weights", "SD-XL-tiny_4_ti.ckpt"))
