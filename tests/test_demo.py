"""The web demo: its page callbacks, its API through gradio_client against a live server on a free 127.0.0.1 port,
and the page itself in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagegpt.demo_core import BLANK_COLOR, ModelChoices, quantize, read_image
from imagegpt.demo_render import PAD, display_scale
from imagegpt.demo_core import example_images
from imagegpt.pretrained import packaged_examples

# gradio 6.31's queue calls pandas 3 in ways it deprecates; not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]  # fmt: skip

CHROMIUM = "/usr/bin/chromium"
ROW = re.compile(r"row (\d+) of (\d+)")
FMNIST = "fashion-mnist"  # 28x28, 16 grays, 0.9 M parameters: fast; by name, whichever model is the default
EXAMPLE = packaged_examples(FMNIST)[0]


def test_import_never_loads_gradio():
    code = "import sys, imagegpt, imagegpt.cli, imagegpt.demo, imagegpt.demo_core; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_demo_help_and_bad_port():
    from imagegpt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit):
        main(["demo", "--share", "maybe"])
    assert main(["demo", "--port", "0"]) == 2


def _tiles(picture: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Cut a strip from demo_render.strip back into n (h, w, 3) images at model resolution (the centre of each
    upscaled pixel: the cut line runs along block edges)."""
    scale = display_scale(h, w)
    tiles = []
    for i in range(n):
        x = PAD + i * (w * scale + PAD) + scale // 2
        tiles.append(picture[PAD + scale // 2 : PAD + h * scale : scale, x : x + w * scale : scale])
    return np.stack(tiles)


def test_building_the_app_writes_nothing_into_the_package():
    pytest.importorskip("gradio")
    import imagegpt
    from imagegpt.demo import build_app

    package = Path(imagegpt.__file__).parent
    before = sorted(p.name for p in package.iterdir())
    build_app([])
    assert sorted(p.name for p in package.iterdir()) == before and not (package / "demo.pyi").exists()


def test_app_functions_without_a_server(tmp_path):
    pytest.importorskip("gradio")
    from imagegpt.demo import _app_functions

    fn = _app_functions(ModelChoices())
    picture, text = fn["preview"](str(EXAMPLE), FMNIST, 20)
    assert picture.shape[:2] == (28 * 8, 28 * 8) and "top **20** of 28" in text
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert fn["preview"](str(bad), FMNIST, 20) == (None, fn["preview"](str(bad), FMNIST, 20)[1])
    assert "is not an image" in fn["preview"](str(bad), FMNIST, 20)[1]
    frames = list(fn["complete"](str(bad), FMNIST, 20, 1, 1.0, 0, 1.0, 0))
    assert frames == [(None, frames[0][1])] and "⚠️" in frames[0][1]
    text, height = fn["model_info"](FMNIST)
    assert height == 28 and "a 16-color gray palette" in text
    picture, text = fn["look_inside"](str(EXAMPLE), FMNIST)
    assert "bits/dim" in text and picture.shape[0] == 28 * 8 + 2 * PAD


# --- a live server ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("gradio")
    from imagegpt.demo import launch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `imagegpt demo` does
    port = _free_port()
    app = launch(host="127.0.0.1", port=port, concurrency=1, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_api_completion_streams_rows_in_order_and_keeps_the_input(client):
    from gradio_client import handle_file

    rows, samples = 24, 2
    job = client.submit(handle_file(str(EXAMPLE)), FMNIST, rows, samples, 1.0, 0, 1.0, 7,
                        api_name="/complete")  # fmt: skip
    picture, status = job.result(timeout=300)
    assert "row 28 of 28" in status and "done" in status
    tiles = _tiles(_read(picture), samples + 2, 28, 28)  # [kept rows | samples | quantized input]
    entry = ModelChoices().get(FMNIST)
    quantized = quantize(entry, read_image(EXAMPLE)[0])[2]
    assert (tiles[-1] == quantized).all()
    assert (tiles[1:-1, :rows] == quantized[:rows]).all()  # kept rows equal the input
    assert not (tiles[1:-1, rows:] == BLANK_COLOR).all()  # the rest was painted
    outputs = job.outputs()
    done = [int(ROW.search(text).group(1)) for _, text in outputs]
    assert done == list(range(rows, 29))  # one update per row, in order
    final = tiles[1:-1]
    for (path, _), r in zip(outputs, done):
        frame = _tiles(_read(path), samples + 2, 28, 28)[1:-1]
        assert (frame[:, :r] == final[:, :r]).all() and (frame[:, r:] == BLANK_COLOR).all()


def test_api_bad_uploads_give_a_message_and_the_server_lives(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "notes.png"
    bad.write_text("plain text, named like an image")
    picture, status = client.predict(handle_file(str(bad)), FMNIST, 14, 1, 1.0, 0, 1.0, 0, api_name="/complete")
    assert picture is None and "is not an image this demo can read" in status
    big = tmp_path / "big.png"
    Image.new("1", (5000, 5000)).save(big)
    picture, status = client.predict(handle_file(str(big)), FMNIST, api_name="/look_inside")
    assert picture is None and "limit is 16.8 megapixels" in status
    picture, status = client.predict(handle_file(str(EXAMPLE)), FMNIST, api_name="/look_inside")
    assert "bits/dim" in status and _read(picture).std() > 10


def test_api_stop_frees_the_server_and_light_events_do_not_queue(client):
    """With one model job at a time: the preview answers while a long job runs, and a cancelled long job does not
    hold up the next one."""
    from gradio_client import handle_file

    long_job = client.submit(FMNIST, 16, 1.0, 0, 1.0, 0, api_name="/sample")  # 16 images x 28 rows
    deadline = time.monotonic() + 120
    while not long_job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert long_job.outputs(), "the long job never streamed a row"
    picture, text = client.predict(handle_file(str(EXAMPLE)), FMNIST, 10, api_name="/preview")
    assert "top **10** of 28" in text and not long_job.done(), "the preview waited for the running job"
    long_job.cancel()
    short = client.submit(handle_file(str(EXAMPLE)), FMNIST, 27, 1, 1.0, 0, 1.0, 0, api_name="/complete")
    _, status = short.result(timeout=120)
    assert "row 28 of 28" in status
    painted = [int(ROW.search(text).group(1)) for _, text in long_job.outputs()]
    assert max(painted) < 28, "the stopped job ran to the end"


# --- a real browser ---------------------------------------------------------------------------------------------


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright): the browser test cannot run")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium): the browser test cannot run")
    return sync_playwright


def _launch(p):
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    return p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])


def test_browser_completes_an_example(server, tmp_path):
    """Load the page, pick the first example (the default model's), complete it and watch the rows arrive."""
    sync_playwright = _browser_or_skip()
    screenshot = Path(os.environ.get("IMAGEGPT_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    _, name, _ = example_images()[0]
    height = ModelChoices().get(name).height
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1250})
            page.goto(server, wait_until="domcontentloaded", timeout=60_000)
            page.locator("#examples img").first.wait_for(timeout=60_000)
            page.locator("#examples img").first.click()
            page.locator("#cut-preview img").wait_for(timeout=60_000)  # the cut line preview appears
            page.locator("#model-info").get_by_text(name).wait_for(timeout=60_000)  # the example's model is chosen
            page.wait_for_timeout(500)  # the rows slider takes the model's height
            for slider, value in (("#samples-slider", 2), ("#rows-slider", height - 8)):
                page.locator(f"{slider} input[type=number]").fill(str(value))
                page.locator(f"{slider} input[type=number]").press("Enter")
            page.evaluate("""() => { window.__srcs = new Set(); const root = document.querySelector('#completions');
                new MutationObserver(() => root.querySelectorAll('img').forEach(i => window.__srcs.add(i.src)))
                .observe(root, {subtree: true, childList: true, attributes: true}); }""")
            page.locator("#complete-button").click()
            page.get_by_text(re.compile(f"row {height} of {height} .* done")).wait_for(timeout=240_000)
            page.wait_for_timeout(500)  # the last image loads
            frames = page.evaluate("() => window.__srcs.size")
            status = page.locator("#complete-status").inner_text()
            shot = Image.open(io.BytesIO(page.locator("#completions img").first.screenshot())).convert("RGB")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert f"row {height} of {height}" in status
    assert frames >= 2, f"the result image changed {frames} time(s): not streamed"
    pixels = np.asarray(shot, dtype=np.float64)
    assert min(shot.size) > 100 and pixels.std() > 20, "the result image is blank"
    assert Image.open(screenshot).size[0] == 1280


def test_drawing_lands_on_white_paper():
    pytest.importorskip("gradio")
    from imagegpt.demo import drawing

    canvas = np.zeros((10, 10, 4), dtype=np.uint8)  # transparent
    canvas[2:4, :] = (0, 0, 0, 255)  # one black stroke
    rgb = drawing({"background": None, "layers": [], "composite": canvas})
    assert rgb.shape == (10, 10, 3) and (rgb[2:4] == 0).all() and (rgb[5:] == 255).all()
    assert drawing(None) is None and drawing({"composite": None}) is None


def test_browser_drawing_becomes_the_input(server):
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1250})
            page.goto(server, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_role("tab", name="Draw").click()
            page.locator("#sketch button[aria-label=Brush]").click()
            box = page.locator("#sketch canvas").first.bounding_box()
            x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5
            page.mouse.move(x, y)
            page.mouse.down()
            for i in range(20):
                page.mouse.move(x + 5 * i, y - 6 * i, steps=2)
            page.mouse.up()
            page.locator("#cut-preview img").wait_for(timeout=60_000)
            preview = Image.open(io.BytesIO(page.locator("#cut-preview img").screenshot())).convert("L")
        finally:
            browser.close()
    above = np.asarray(preview)[: preview.height // 2]
    assert (above > 200).any() and (above < 50).any(), "the white stroke on black paper is not in the preview"


def test_an_unexpected_error_is_a_message_not_a_crash(monkeypatch):
    pytest.importorskip("gradio")
    import imagegpt.demo as demo

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "surprise", broken)
    monkeypatch.setattr(demo, "stream_sample", broken)
    fn = demo._app_functions(ModelChoices())
    assert fn["look_inside"](str(EXAMPLE), FMNIST) == (None, "⚠️ internal error: RuntimeError: boom")
    assert list(fn["sample"](FMNIST, 1, 1.0, 0, 1.0, 0)) == [(None, "⚠️ internal error: RuntimeError: boom")]
