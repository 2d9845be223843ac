"""demo/sampling.py: Streamlit's AppTest (render, prompt, generate, download), and the real server
started headless (HTTP page, health endpoint, script runs over its websocket: render, then generate).
The app in a real browser: tests/test_app_in_browser.py."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

# MindSpore first, so protobuf's pure-Python backend serves both (see gm/mindspore_in_streamlit.py).
import mindspore  # noqa: F401
import numpy as np
import pytest

from conftest import ROOT

from gm.textual_inversion.embeddings import save_ti

pytestmark = pytest.mark.streamlit

APP = os.path.join(ROOT, "demo", "sampling.py")
TRAIN_CONFIG = os.path.join(ROOT, "configs", "training", "sd_xl_tiny_finetune_textual_inversion.yaml")


def ti_rows(seed, n):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, w)).astype(np.float32) for w in (32, 64)]


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("app")
    out = {"weights": tiny_checkpoint, "cat": str(folder / "cat_ti.ckpt"),
           "art": str(folder / "SD-XL-tiny_2000_ti.ckpt"), "sd1": str(folder / "old.ckpt")}
    save_ti(out["cat"], "<cat-toy>", ti_rows(1, 2))
    save_ti(out["art"], "<chinese-art>", ti_rows(2, 1))
    from gm.checkpoints.weight_files import write_ckpt
    write_ckpt(out["sd1"], [("clip_l", np.zeros((1, 768), np.float32))])
    return out


@pytest.fixture
def app_env(files, monkeypatch, keep_mode):
    """The sidebar's defaults from the environment, as a user points the app at other weights."""
    monkeypatch.setenv("SDXL_CONFIG", TRAIN_CONFIG)
    monkeypatch.setenv("SDXL_WEIGHT", files["weights"])
    monkeypatch.setenv("SDXL_TI_WEIGHTS", files["cat"])
    monkeypatch.setenv("SDXL_MS_MODE", "1")
    monkeypatch.setenv("SDXL_DEVICE", "CPU")


def test_app_generates_images(app_env, files):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert at.text_input(key="config").value == TRAIN_CONFIG
    assert at.multiselect(key="embeddings").value == [files["cat"]]
    assert at.number_input(key="height").value == 64  # the training config's resolution
    assert "Loaded: <cat-toy> (2 vectors)" in [c.value for c in at.sidebar.caption]
    assert [w.value for w in at.warning] == []  # the default prompt's <cat-toy> is loaded

    at.file_uploader(key="uploads").set_value(("SD-XL-tiny_2000_ti.ckpt", open(files["art"], "rb").read(),
                                               "application/octet-stream"))
    at.text_area(key="prompt").input("a <cat-toy> in <chinese-art> style with a <dog-toy>")
    at.selectbox(key="sampler").set_value("dpmpp_2m")
    for key, value in (("steps", 2), ("height", 32), ("width", 64), ("count", 2), ("seed", 7)):
        at.number_input(key=key).set_value(value)
    at.button(key="generate").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert "Loaded: <cat-toy> (2 vectors), <chinese-art> (1 vectors)" in [c.value for c in at.sidebar.caption]
    (warning,) = [w.value for w in at.warning]
    assert "<dog-toy> looks like a learned word" in warning
    (images,) = at.image
    assert len(images.value) == 2 and images.captions[0].endswith("(seed 7, 1/2)")
    labels = [d.label for d in at.download_button]
    assert labels == ["Download image 1", "Download image 2", "Download grid"]

    at.download_button[0].click().run()  # a rerun keeps the images
    assert len(at.image) == 1 and len(at.image[0].value) == 2

    at.number_input(key="height").set_value(40)
    (error,) = [e.value for e in at.button(key="generate").click().run().error]
    assert "multiples of 32 for this model, got 40x64" in error

    at.file_uploader(key="uploads").set_value(("old.ckpt", open(files["sd1"], "rb").read(), "application/octet-stream"))
    (error,) = [e.value for e in at.run().error]
    assert "old.ckpt: looks like an SD 1.x embedding" in error


@pytest.mark.parametrize("variable,value,expected", [
    ("SDXL_MS_MODE", "abc", "environment variable SDXL_MS_MODE: 'abc': expected 0 (graph mode) or 1 (PyNative)"),
    ("SDXL_MS_MODE", "5", "environment variable SDXL_MS_MODE: '5': expected 0 (graph mode) or 1 (PyNative)"),
    ("SDXL_DEVICE", "tpu", "environment variable SDXL_DEVICE: 'tpu': expected one of CPU, GPU, Ascend"),
])
def test_bad_environment_is_one_error(app_env, monkeypatch, variable, value, expected):
    """A bad value in the app's environment is shown as one error naming the variable, not a traceback."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(variable, value)
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    (error,) = [e.value for e in at.error]
    assert error.startswith(expected), error


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_bytes(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def get(url, timeout=2):
    status, body = get_bytes(url, timeout)
    return status, body.decode()


@contextlib.contextmanager
def served_app(log_path, env, *flags):
    """``streamlit run demo/sampling.py --server.headless true`` on a free port, with the variables ``env`` added
    to this environment less PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION (the app must import MindSpore itself) and
    the app's ``flags`` after ``--``: its address once the health check answers ok; the server is stopped after."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
                                   "--server.port", str(port), "--server.address", "127.0.0.1",
                                   "--browser.gatherUsageStats", "false", "--", *flags],
                                  cwd=ROOT, env={**environment, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300  # a crash ends the wait at once; a loaded machine starts slowly
            while True:
                try:
                    health = get(f"{url}/_stcore/health")
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, open(log_path).read()
                    time.sleep(0.5)
            assert health == (200, "ok")
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def script_run(ws, message, forward_type):
    """Send one BackMsg asking for a script run; the new elements until it finished successfully."""
    message.rerun_script.query_string = ""
    ws.send(message.SerializeToString())
    elements = []
    while True:
        forward = forward_type()
        forward.ParseFromString(ws.recv(timeout=300))
        kind = forward.WhichOneof("type")
        if kind == "delta" and forward.delta.WhichOneof("type") == "new_element":
            elements.append(forward.delta.new_element)
        if kind == "script_finished":
            assert forward.script_finished == forward_type.FINISHED_SUCCESSFULLY, forward
            return elements


@pytest.mark.slow
def test_headless_server_serves_the_app(files, tmp_path):
    """``streamlit run demo/sampling.py --server.headless true``: the page, the health check, and a script run."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    with served_app(tmp_path / "server.log", dict(SDXL_CONFIG=TRAIN_CONFIG, SDXL_WEIGHT=files["weights"],
                                                 SDXL_TI_WEIGHTS=files["cat"], SDXL_MS_MODE="1")) as url:
        status, page = get(url)
        assert status == 200 and "<title>Streamlit</title>" in page and '<div id="root">' in page

        with connect(url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"], max_size=None) as ws:
            elements = script_run(ws, BackMsg(), ForwardMsg)
            types = [e.WhichOneof("type") for e in elements]
            assert "exception" not in types and "alert" not in types, [str(e) for e in elements if e.alert.body]
            assert elements[types.index("heading")].heading.body == "SDXL with learned words"
            assert "Loaded: <cat-toy> (2 vectors)" in [e.markdown.body for e in elements]
            assert "imgs" not in types

            widgets = {getattr(e, e.WhichOneof("type")).id.rsplit("-", 1)[-1]: e for e in elements
                       if e.WhichOneof("type") in ("button", "number_input")}
            click = BackMsg()
            for key, value in (("steps", 1), ("height", 32), ("width", 32)):
                click.rerun_script.widget_states.widgets.add(id=widgets[key].number_input.id, int_value=value)
            click.rerun_script.widget_states.widgets.add(id=widgets["generate"].button.id, trigger_value=True)
            elements = script_run(ws, click, ForwardMsg)
            types = [e.WhichOneof("type") for e in elements]
            assert "exception" not in types, [str(e) for e in elements if e.WhichOneof("type") == "exception"]
            (images,) = [e.imgs for e in elements if e.WhichOneof("type") == "imgs"]
            assert len(images.imgs) == 1 and images.imgs[0].url.startswith("/media/")
            status, png = get_bytes(url + images.imgs[0].url)
            assert status == 200 and png.startswith(b"\x89PNG")
