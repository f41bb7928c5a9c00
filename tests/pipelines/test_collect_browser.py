"""``pixmo collect`` in a real headless Chromium (Debian's, driven by Selenium through Debian's
chromedriver) with a fake microphone playing synthesized speech: log in, record, submit, read
the transcript, click points (one undone, one dragged), submit; then ``pixmo build --raw``
turns it into a sample whose transcript is the script and whose points are where the test
clicked, on an image stored turned (EXIF orientation 6)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pipelines.cli import main
from pixmo.dataset.reader import iter_samples
from pixmo.speech.audio import read_audio
from pixmo.synth.tts import synthesize_in_fresh_process
from tests.collect_raw import ALICE, Server, jsonl, make_raw, spoken_wer, write_annotators

SCRIPT = ("A yellow square fills the whole picture. It is a flat bright colour with no text, "
          "no people and no animals. The light is even, and there is nothing in the "
          "background at all.")
# displayed pixels of the turned 240x320 image, in click order; the second is undone and
# clicked again elsewhere, the first dragged by DRAG
CLICKS = [(40, 60), (200, 30), (120, 290)]
UNDONE = (10, 10)
DRAG = (15, -20)
NAME = "images/turned #1?.jpg"  # characters a URL path must escape
WAIT_S = 300  # an upper bound on waiting for the page, never a measure of speed


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{names[0]} is needed: apt-get install -y --no-install-recommends "
                "chromium chromium-driver")


def browser(tmp_path: Path, wav: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = _tool("chromium", "chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}%noloop",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(_tool("chromedriver")))


def wait_for(driver: webdriver.Chrome, script: str):
    """Wait until the page's ``script`` is true (the page's own state, not a sleep)."""
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return {script}"))


def record(driver: webdriver.Chrome, seconds: float) -> str:
    """Record ``seconds`` of the fake microphone, submit, and return the transcript shown."""
    wait_for(driver, "document.body.dataset.kind === 'caption' && "
                     "document.body.dataset.state === 'ready'")
    driver.find_element(By.ID, "record").click()
    wait_for(driver, "document.getElementById('timer').classList.contains('enough')")
    wait_for(driver, f"Recorder.seconds() >= {seconds}")  # the whole script
    driver.find_element(By.ID, "record").click()  # stop
    wait_for(driver, "document.body.dataset.state === 'recorded'")
    assert driver.find_element(By.ID, "playback").is_displayed()
    driver.find_element(By.ID, "submit-caption").click()
    wait_for(driver, "document.body.dataset.state === 'transcribed'")
    heard = driver.find_element(By.ID, "transcript-text").text
    driver.find_element(By.ID, "next-caption").click()
    return heard


def point(driver: webdriver.Chrome) -> None:
    wait_for(driver, "document.body.dataset.kind === 'points' && "
                     "document.getElementById('points-image').complete")
    image = driver.find_element(By.ID, "points-image")
    assert (image.size["width"], image.size["height"]) == (240, 320)  # shown turned

    def click(x: int, y: int) -> None:  # offsets from the element's centre
        ActionChains(driver).move_to_element_with_offset(image, x - 120, y - 160).click().perform()

    driver.find_element(By.ID, "label-input").send_keys("yellow square")
    first = (CLICKS[0][0] - DRAG[0], CLICKS[0][1] - DRAG[1])
    for xy in (first, UNDONE):
        click(*xy)
    driver.find_element(By.TAG_NAME, "body").send_keys("u")  # undo the last click
    for xy in CLICKS[1:]:
        click(*xy)
    wait_for(driver, "document.body.dataset.points === '3'")
    marker = driver.find_elements(By.CSS_SELECTOR, ".marker")[0]
    ActionChains(driver).click_and_hold(marker).move_by_offset(*DRAG).release().perform()
    driver.find_element(By.ID, "every").click()
    assert driver.find_element(By.ID, "submit-points").is_enabled()
    driver.find_element(By.ID, "submit-points").click()
    wait_for(driver, "document.getElementById('message').textContent.includes('Nothing left')")


def test_an_annotator_in_chromium_records_and_points(tmp_path):
    raw = make_raw(tmp_path / "raw", images=0)  # one image, stored turned
    (raw / "images/turned.jpg").rename(raw / NAME)
    wav = synthesize_in_fresh_process(SCRIPT, tmp_path / "script.wav", pad_seconds=0.5)
    seconds = read_audio(wav).duration_s
    # Whisper's segments cover a little less than the file: QC asks 2 s less
    server = Server(raw, write_annotators(tmp_path / "annotators.json"),
                    min_speech_s=round(seconds - 2, 1))
    driver = browser(tmp_path, wav)
    try:
        driver.get(f"{server.url}#token={ALICE}")
        heard = record(driver, seconds + 0.5)
        point(driver)
        assert driver.execute_script("return location.hash") == ""  # token off the address
    finally:
        driver.quit()
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait()
    assert spoken_wer(SCRIPT, heard) <= 0.35, heard
    (session,) = jsonl(raw / "captions.jsonl")
    assert session["audio"].endswith(".webm") and session["annotator"] == "alice"
    assert session["image"] == NAME
    (annotation,) = jsonl(raw / "points.jsonl")
    assert annotation["label"] == "yellow square" and len(annotation["points"]) == 3

    out = tmp_path / "out"
    assert main(["build", "--raw", str(raw), "--out", str(out), "--min-speech-s", "1"]) == 0
    (sample,) = list(iter_samples(out))
    (transcript,) = sample.json["transcripts"]
    assert spoken_wer(SCRIPT, transcript["text"]) <= 0.35, transcript["text"]
    (points,) = sample.json["points"]
    shown = [(x / 100 * 240, y / 100 * 320) for x, y in points["points"]]
    for (x, y), (cx, cy) in zip(sorted(shown), sorted(CLICKS), strict=True):
        assert abs(x - cx) <= 1 and abs(y - cy) <= 1, (shown, CLICKS)
