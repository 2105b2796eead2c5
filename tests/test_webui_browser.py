"""`tft2v serve` end to end in headless Chromium: load the page, submit a prompt, get a playable video.

The server runs as a subprocess with a Python audit hook that records every DNS lookup and socket
connect to a non-loopback address, so the test also proves the UI starts and serves fully offline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest
from webui_fixtures import DEFAULTS, SIZE, write_source_image, write_source_video, write_tiny_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")

# Runs `tft2v serve` in-process after installing an audit hook that logs outside network use.
SERVER = """
import sys
LOCAL = {local!r}
log = open({log!r}, "a", buffering=1)
def hook(event, args):
    if event == "socket.getaddrinfo" and args[0] is not None:
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if host not in LOCAL:
            log.write(f"lookup {{host}}\\n")
    elif event == "socket.connect" and isinstance(args[1], tuple) and str(args[1][0]) not in LOCAL:
        log.write(f"connect {{args[1]}}\\n")
sys.addaudithook(hook)
from tft2v.cli import main
main(sys.argv[1:])
"""

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"tft2v serve exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"tft2v serve did not answer on {url} within {timeout_s} s")


@pytest.fixture
def server(tmp_path):
    model = write_tiny_model(tmp_path / "model", conditions=("sketch", "local_image"))
    port, log = free_port(), tmp_path / "network.log"
    log.touch()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "PYTHONUNBUFFERED": "1"}
    code = SERVER.format(local=LOCAL_HOSTS, log=str(log))
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", str(model), "--port", str(port),
                             "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, proc)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    if shutil.which("chromium") is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (apt-get install -y chromium); under CI=true this test runs")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def decode(url: str, path: Path) -> list:
    """Download the video the page shows and decode it -> list of uint8 (H, W, 3) frames."""
    with urllib.request.urlopen(url, timeout=30) as response:
        path.write_bytes(response.read())
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_serve_generates_a_video_in_chromium(browser, server, tmp_path):
    from playwright.sync_api import expect

    url, network_log = server
    page = browser.new_page(viewport={"width": 1100, "height": 860})
    outside = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
    page.goto(url)
    expect(page).to_have_title("TF-T2V text-to-video", timeout=60_000)  # gradio sets it once it renders
    expect(page.locator("#negative-prompt textarea")).to_have_value(DEFAULTS["negative_prompt"])

    # An empty prompt is refused with a readable message, not a stack trace.
    page.locator("#generate").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=60_000)
    page.reload()

    # Two users at once: the queue runs them one after the other and both get their video.
    other = browser.new_page()
    other.goto(url)
    other.locator("#prompt textarea").fill("a blue square moving up")
    other.locator("#seed input").fill("7")
    page.locator("#prompt textarea").fill("a red circle moving left")
    page.locator("#generate").click()
    other.locator("#generate").click()
    video = page.locator("#result video[src]")
    video.wait_for(timeout=180_000)
    other.get_by_text("seed 7 · 4 frames").wait_for(timeout=180_000)
    assert other.locator("#result video").get_attribute("src") != video.get_attribute("src")
    other.close()
    page.get_by_text("seed 0 · 4 frames").wait_for(timeout=10_000)
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    src = video.get_attribute("src")
    assert src.startswith(url) and src.endswith(".mp4")
    frames = decode(src, tmp_path / "result.mp4")
    assert len(frames) == DEFAULTS["num_frames"] and frames[0].shape == (SIZE, SIZE, 3)

    # The model takes a sketch condition: upload a source video, generate again, get a new video.
    page.get_by_text("Conditions (optional)").click()
    page.locator("#condition-sketch input[type=file]").set_input_files(str(write_source_video(tmp_path / "s.mp4")))
    page.locator("#condition-sketch video[src]").wait_for(timeout=60_000)
    page.locator("#generate").click()
    page.get_by_text("sketch from upload").wait_for(timeout=180_000)
    page.screenshot(path=str(tmp_path / "serve_sketch.png"), full_page=True)
    guided_src = page.locator("#result video[src]").get_attribute("src")
    assert guided_src != src
    assert len(decode(guided_src, tmp_path / "guided.mp4")) == DEFAULTS["num_frames"]

    # ... and a local_image condition: an uploaded image becomes the first-frame condition.
    page.locator("#condition-local_image input[type=file]").set_input_files(
        str(write_source_image(tmp_path / "first.png")))
    page.locator("#condition-local_image img[src]").wait_for(timeout=60_000)
    page.locator("#generate").click()
    page.get_by_text("sketch, local_image from upload").wait_for(timeout=180_000)
    imaged_src = page.locator("#result video[src]").get_attribute("src")
    assert imaged_src not in (src, guided_src)
    assert len(decode(imaged_src, tmp_path / "imaged.mp4")) == DEFAULTS["num_frames"]

    assert outside == [], f"the page loaded outside resources: {outside}"
    assert network_log.read_text() == "", f"the server used the network: {network_log.read_text()}"
