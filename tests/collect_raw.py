"""What the ``pixmo collect`` tests share: a raw folder of real images (one stored turned, with
an EXIF orientation), annotator tokens, and the sample speech as uploads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.paths import SPEECH

TOKENS = {"tok-alice-0123456789abcdef": "alice", "tok-bob-0123456789abcdef00": "bob",
          "tok-carol-0123456789abcdef0": "carol"}
ALICE, BOB, CAROL = TOKENS
SPEECH_CLIP = SPEECH / "kitchen.opus"  # 19.7 s of English
SHORT_S = 5.0  # min_speech_s the sample clips pass


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_raw(root: Path, images: int = 3, size: tuple[int, int] = (320, 240)) -> Path:
    """``root/images`` with ``images`` PNGs, plus ``turned.jpg`` stored 90 degrees turned
    (EXIF orientation 6: stored ``size``, displayed with width and height swapped)."""
    folder = root / "images"
    folder.mkdir(parents=True)
    for i in range(images):
        Image.new("RGB", size, (40 * i, 120, 200 - 40 * i)).save(folder / f"{i:03d}.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", size, (200, 180, 40)).save(folder / "turned.jpg", quality=90,
                                                 exif=exif.tobytes())
    return root


def write_annotators(path: Path) -> Path:
    path.write_text(json.dumps(TOKENS))
    return path


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spoken_wer(reference: str, hypothesis: str) -> float:
    """Word error rate, words lower-cased and punctuation removed."""
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                          jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                          jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=norm,
                     hypothesis_transform=norm)


class Server:
    """``pixmo collect`` in a child process; ``url`` once it printed ``serving URL``."""

    def __init__(self, raw: Path, annotators: Path | None,
                 min_speech_s: float = SHORT_S) -> None:
        entry = Path(sys.executable).with_name("pixmo")
        given = [] if annotators is None else ["--annotators", str(annotators)]
        self.proc = subprocess.Popen(
            [str(entry), "collect", "--raw", str(raw), *given,
             "--min-speech-s", str(min_speech_s), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("serving "):
                self.url = line.split()[1]
                if annotators is None:  # the login link follows
                    self.lines.append(self.proc.stdout.readline().rstrip("\n"))
                return
        raise AssertionError(f"server ended: {self.lines} {self.proc.stderr.read()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
