"""gm.compile_cache: a second identical run loads its graphs from the cache, any change of what shapes the
graphs picks another entry, and an unwritable folder or a damaged entry costs one warning, never a wrong
graph. Every test has a cache folder of its own (tmp_path)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY_CONFIG, run_script

from gm import compile_cache
from gm.textual_inversion.settings import Concept, Settings

NET = os.path.join("tests", "programs", "compile_cache_net.py")
LOADED = "Use the compilation cache"  # MindSpore's log line when it loads a graph from the cache


def net(folder, rows):
    """Run the small network of tests/programs/compile_cache_net.py: (its JSON line, stderr)."""
    result = run_script(NET, str(folder), str(rows))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["out"] == [float(sum(range(4 * rows)))] * 3  # the right graph for this shape, cached or not
    return out, result.stderr


def files(entry):
    """{path: (inode, mtime)} of MindSpore's files in an entry."""
    return {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in compile_cache._cache_files(entry).values()}


def warnings(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def test_a_second_identical_run_loads_the_same_entry_unchanged(tmp_path):
    first, err = net(tmp_path, 2)
    assert not first["reused"] and LOADED not in err
    written = files(first["entry"])
    assert any(p.endswith(".mindir") for p in written)
    assert os.path.isfile(os.path.join(first["entry"], compile_cache.MANIFEST))
    second, err = net(tmp_path, 2)
    assert second["entry"] == first["entry"] and second["reused"]
    assert LOADED in err and not warnings(err)
    assert files(second["entry"]) == written  # loaded, not compiled and written again
    assert os.listdir(tmp_path) == [os.path.basename(first["entry"])]


def test_another_shape_uses_another_entry(tmp_path):
    two, _ = net(tmp_path, 2)
    three, err = net(tmp_path, 3)  # with one shared folder this run would get the 2-row graph and a wrong sum
    assert three["entry"] != two["entry"] and not three["reused"] and LOADED not in err
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(o["entry"]) for o in (two, three))


def test_an_unwritable_folder_is_one_warning_and_no_cache(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    folder = tmp_path / "file" / "cache"
    out, err = net(folder, 2)
    assert out["entry"] is None
    (line,) = warnings(err)
    assert line.startswith(f"warning: compile cache {folder}: cannot write there") and "without it" in line


@pytest.mark.parametrize("damage", ["changed", "truncated", "no_manifest"])
def test_a_damaged_entry_is_one_warning_removed_and_no_cache(damage, tmp_path):
    first, _ = net(tmp_path, 2)
    entry = first["entry"]
    graph = next(p for p in files(entry) if p.endswith(".mindir"))
    os.chmod(graph, 0o600)
    data = open(graph, "rb").read()
    if damage == "changed":  # same size, one byte different: MindSpore could still parse it
        open(graph, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncated":
        open(graph, "wb").write(data[: len(data) // 2])
    else:  # a run that stopped before sealing its entry, over an hour ago
        os.remove(os.path.join(entry, compile_cache.MANIFEST))
        for path in files(entry):
            os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - 2 * compile_cache.BUSY))
    out, err = net(tmp_path, 2)
    assert out["entry"] is None and LOADED not in err
    (line,) = warnings(err)
    assert line.startswith(f"warning: compile cache {entry}: a damaged or unfinished entry; removed")
    assert not os.path.exists(entry)
    again, err = net(tmp_path, 2)  # the next run builds the entry afresh
    assert again["entry"] == entry and not again["reused"] and not warnings(err)


def test_an_entry_being_written_by_another_run_is_left_alone(tmp_path):
    first, _ = net(tmp_path, 2)
    os.remove(os.path.join(first["entry"], compile_cache.MANIFEST))  # as while its run still compiles
    written = files(first["entry"])
    out, err = net(tmp_path, 2)
    assert out["entry"] is None and LOADED not in err and not warnings(err)
    assert files(first["entry"]) == written


def settings(**changes):
    values = dict(config={"model": {"width": 32}}, config_path="a.yaml", weight="w.safetensors", save_path="runs/a",
                  concepts=[Concept("<a>", "data", num_vectors=2)], resolution=64, batch_size=1, seed=1,
                  total_step=10)
    values.update(changes)
    return Settings(**values)


@pytest.mark.parametrize("change", [dict(resolution=128), dict(batch_size=2), dict(config={"model": {"width": 64}}),
                                    dict(concepts=[Concept("<a>", "data", num_vectors=3)]), dict(amp_level="O2"),
                                    dict(amp_dtype="bfloat16", amp_level="O2"), dict(infer_during_train=True),
                                    dict(concepts=[Concept("<a>", "data"), Concept("<b>", "data2")])])
def test_each_graph_shaping_setting_is_part_of_the_key(change):
    assert compile_cache.cache_key(compile_cache.training_parts(settings(**change))) != \
        compile_cache.cache_key(compile_cache.training_parts(settings()))


@pytest.mark.parametrize("change", [dict(save_path="runs/b"), dict(seed=2), dict(total_step=99), dict(weight="x"),
                                    dict(concepts=[Concept("<a>", "elsewhere", num_vectors=2)])])
def test_values_that_shape_no_graph_keep_the_key(change):
    assert compile_cache.cache_key(compile_cache.training_parts(settings(**change))) == \
        compile_cache.cache_key(compile_cache.training_parts(settings()))


def test_mode_and_sources_are_part_of_the_key(tmp_path, monkeypatch, keep_mode):
    import mindspore as ms

    parts = compile_cache.training_parts(settings())
    ms.set_context(mode=0)
    graph = compile_cache.cache_key(parts)
    ms.set_context(mode=1)
    assert compile_cache.cache_key(parts) != graph
    (tmp_path / "gm").mkdir()
    (tmp_path / "gm" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(compile_cache, "GM", str(tmp_path / "gm"))
    before = compile_cache.cache_key(parts)
    (tmp_path / "gm" / "a.py").write_text("x = 2\n")
    assert compile_cache.cache_key(parts) != before


def test_off_and_the_environment_pick_the_folder(monkeypatch):
    monkeypatch.setenv(compile_cache.ENV, "/somewhere")
    assert compile_cache.resolve() == "/somewhere" and compile_cache.resolve("mine") == "mine"
    assert compile_cache.resolve("off") is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None
    monkeypatch.delenv(compile_cache.ENV)
    assert compile_cache.resolve().endswith(os.path.join("sdxl_ti", "compile"))


@pytest.mark.slow
def test_the_sampling_cli_reuses_its_graphs(tiny_checkpoint, tmp_path):
    """demo/sampling_without_streamlit.py twice with the same settings: the second run loads every graph
    and draws the same image; a third at another size compiles into another entry."""
    cache = tmp_path / "cache"

    def sample(save, size="64"):
        result = run_script("demo/sampling_without_streamlit.py", "--config", TINY_CONFIG, "--weight",
                            tiny_checkpoint, "--prompt", "a cube", "--sample_step", "2", "--H", size, "--W", size,
                            "--device_target", "CPU", "--save_path", str(tmp_path / save), "--compile_cache",
                            str(cache))
        assert result.returncode == 0, result.stderr[-3000:]
        return np.asarray(Image.open(tmp_path / save / "00000.png")), result.stderr

    first, err = sample("a")
    assert LOADED not in err
    (entry,) = [cache / name for name in os.listdir(cache)]
    written = files(str(entry))
    second, err = sample("b")
    assert LOADED in err and files(str(entry)) == written
    assert np.array_equal(first, second)
    sample("c", "96")
    assert len(os.listdir(cache)) == 2
