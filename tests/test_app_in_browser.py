"""demo/sampling.py in a real browser: ``streamlit run`` headless on the toy model, driven by Selenium in headless
Chromium (Debian's chromium and chromium-driver, which tests/install_browser.sh installs; never downloaded at run
time). Without them the test is skipped loudly, and fails when the environment variable CI is set.

    python tests/test_app_in_browser.py checkpoints/app_screenshot.png   # the README's screenshot
"""
import argparse
import io
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import pytest
from PIL import Image

from test_streamlit_app import get_bytes, served_app

from gm.textual_inversion.embeddings import save_ti

pytestmark = pytest.mark.streamlit

TOY_CONFIG = "configs/inference/sd_xl_toy.yaml"  # relative to the repository, the server's folder
TOY_WEIGHT = "checkpoints/sd_xl_toy.safetensors"
WORD = "<cat-toy>"
TIMEOUT = 300  # seconds for the model to load, and for the test's picture (a loaded machine is slow)


def browser_paths():
    """(chromium, chromedriver) executables, or None when either or Selenium is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    paths = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    return paths if all(paths) else None


def chromium(paths, width, height):
    """Headless Chromium under the system chromedriver given explicitly (so Selenium Manager downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def word_file(path):
    """A ``_ti.ckpt`` for WORD: 2 random vectors per text encoder, at the toy model's widths (32 and 64)."""
    rng = np.random.default_rng(0)
    save_ti(path, WORD, [rng.standard_normal((2, width)).astype(np.float32) for width in (32, 64)])
    return path


def generate(driver, url, prompt, settings, timeout=TIMEOUT):
    """Open the app, type ``prompt`` and the number fields ``settings`` ({label: value}), press Generate and wait
    (``timeout`` seconds for each of the model and the pictures): the warnings shown with the pictures, and the
    first picture's <img> element, once loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def css(selector):
        return driver.find_elements(By.CSS_SELECTOR, selector)

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    wait.until(lambda _: css('[data-testid="stBaseButton-primary"]'))  # the model is loaded
    (field,) = css('textarea[aria-label="Prompt"]')
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(prompt, Keys.CONTROL, Keys.ENTER)
    for label, value in settings.items():
        (field,) = css(f'input[aria-label="{label}"]')
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(str(value), Keys.ENTER)
    (button,) = css('[data-testid="stBaseButton-primary"]')
    button.click()
    images = wait.until(lambda _: [e for e in css('[data-testid="stImage"] img')
                                   if driver.execute_script("return arguments[0].complete", e)
                                   and driver.execute_script("return arguments[0].naturalWidth", e)])
    wait.until(lambda _: not css('[data-testid="stStatusWidget"]'))  # the run has finished
    return [e.text for e in css('[data-testid="stAlert"]')], images[0]


def test_app_draws_a_picture_in_chromium(tmp_path):
    """Prompt with a learned word, 2 steps at 64 x 96 in Chromium: a decoded picture of that size, not blank."""
    paths = browser_paths()
    if paths is None:
        message = ("chromium, chromedriver or selenium is missing: run `bash tests/install_browser.sh` and "
                   "`pip install -r tests/requirements.txt`")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but {message}")
        warnings.warn(f"BROWSER TEST SKIPPED: {message}")
        pytest.skip(f"BROWSER TEST SKIPPED: {message}")
    from selenium.webdriver.common.by import By

    flags = ["--config", TOY_CONFIG, "--weight", TOY_WEIGHT, "--ms_mode", "1", "--device_target", "CPU",
             "--textual_inversion_weight", word_file(str(tmp_path / "cat_ti.ckpt"))]
    prompt = f"a photo of a {WORD}"
    with served_app(tmp_path / "server.log", {}, *flags) as url:
        driver = chromium(paths, 1280, 1100)
        try:
            shown, img = generate(driver, url, prompt, {"Steps": 2, "Height": 64, "Width": 96, "Seed": 3})
            driver.save_screenshot(str(tmp_path / "app.png"))
            assert shown == []  # the prompt's learned word is loaded: no "looks like a learned word" warning
            sidebar = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
            assert f"Loaded: {WORD} (2 vectors)" in sidebar
            size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
            caption = driver.find_element(By.CSS_SELECTOR, '[data-testid="stImageCaption"]').text
            src = img.get_attribute("src")
        finally:
            driver.quit()
        assert size == [96, 64] and caption == f"{prompt} (seed 3, 1/1)", (size, caption)
        status, png = get_bytes(src)
    picture = np.asarray(Image.open(io.BytesIO(png)))
    assert status == 200 and picture.shape == (64, 96, 3) and picture.std() > 1, (status, picture.shape)
    assert Image.open(tmp_path / "app.png").width == 1280


def main(argv=None):
    """Write a screenshot of the app after generating 2 pictures of the toy model with a learned word."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out", help="PNG file to write")
    args = p.parse_args(argv)
    paths = browser_paths()
    if paths is None:
        sys.exit("error: chromium, chromedriver or selenium is missing: run `bash tests/install_browser.sh` and "
                 "`pip install -r tests/requirements.txt`")
    with tempfile.TemporaryDirectory() as folder:
        flags = ["--config", TOY_CONFIG, "--weight", TOY_WEIGHT, "--ms_mode", "1", "--device_target", "CPU",
                 "--textual_inversion_weight", word_file(os.path.join(folder, "cat_ti.ckpt"))]
        with served_app(os.path.join(folder, "server.log"), {}, *flags) as url:
            driver = chromium(paths, 1100, 1240)
            try:
                generate(driver, url, f"a photo of a {WORD}", {"Steps": 12, "Height": 64, "Width": 64, "Images": 2},
                         timeout=900)
                screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
                screenshot.quantize(256).save(args.out, optimize=True)  # 256 colours: a small file for the README
            finally:
                driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
