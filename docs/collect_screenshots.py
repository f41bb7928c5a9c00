"""Takes the README's screenshots of ``pixmo collect``'s two pages in headless Chromium.

The recording page after a recording of eSpeak reading a synthetic scene's description (fake
microphone) was submitted and transcribed, and the pointing page with every instance of the
scene's most frequent shape clicked. Run from the repository root:

    .venv/bin/python docs/collect_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixmo.speech.audio import read_audio  # noqa: E402
from pixmo.synth.scenes import SceneConfig, describe, make_scene, render  # noqa: E402
from pixmo.synth.tts import synthesize_in_fresh_process  # noqa: E402
from tests.collect_raw import ALICE, Server, write_annotators  # noqa: E402
from tests.pipelines.test_collect_browser import browser, wait_for  # noqa: E402

DOCS = Path(__file__).resolve().parent


def save(driver, name: str) -> None:
    """A screenshot as a 256-colour PNG (a third of the bytes, the same to the eye)."""
    from PIL import Image

    driver.save_screenshot(str(DOCS / name))
    with Image.open(DOCS / name) as shot:
        small = shot.convert("RGB").quantize(256)
    small.save(DOCS / name, optimize=True)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "raw/images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    scene = make_scene(rng, SceneConfig())
    image = render(scene, rng)
    image.resize((image.width * 2, image.height * 2)).save(tmp / "raw/images/scene.png")
    wav = synthesize_in_fresh_process(describe(scene, rng), tmp / "say.wav", pad_seconds=0.5)
    seconds = read_audio(wav).duration_s
    server = Server(tmp / "raw", write_annotators(tmp / "a.json"),
                    min_speech_s=round(max(1.0, seconds - 2), 1))
    driver = browser(tmp, wav)
    driver.set_window_size(1280, 1000)
    try:
        driver.get(f"{server.url}#token={ALICE}")
        wait_for(driver, "document.body.dataset.state === 'ready'")
        driver.find_element(By.ID, "record").click()
        wait_for(driver, f"Recorder.seconds() >= {seconds + 0.5}")
        driver.find_element(By.ID, "record").click()
        wait_for(driver, "document.body.dataset.state === 'recorded'")
        driver.find_element(By.ID, "submit-caption").click()
        wait_for(driver, "document.body.dataset.state === 'transcribed'")
        save(driver, "collect-recording.png")
        driver.find_element(By.ID, "next-caption").click()
        wait_for(driver, "document.body.dataset.kind === 'points' && "
                         "document.getElementById('points-image').complete")
        shown = driver.find_element(By.ID, "points-image")
        w, h = shown.size["width"], shown.size["height"]
        label = max(scene.truth()["labels"], key=lambda lab: lab["count"])
        driver.find_element(By.ID, "label-input").send_keys(label["label"])
        for x, y in label["points"]:
            ActionChains(driver).move_to_element_with_offset(
                shown, round(x / 100 * w - w / 2), round(y / 100 * h - h / 2)).click().perform()
        driver.find_element(By.ID, "every").click()
        save(driver, "collect-pointing.png")
    finally:
        driver.quit()
        server.kill()


if __name__ == "__main__":
    main()
