"""`molmo predict` and `molmo convert` on the official-format fixture model,
with a real byte-level BPE tokenizer trained here."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from PIL import Image

from molmo.cli import main
from molmo.generate import GenerationConfig, generate
from molmo.model.weights import from_pretrained
from molmo.predict import Predictor
from molmo.preprocess.tokenizer import train_bpe_tokenizer
from tests.paths import OFFICIAL_TINY

FIXTURE = OFFICIAL_TINY
CORPUS = ["A red circle on the left and a blue square on the right.",
          "Two green triangles near the top of the picture.",
          "There are none.", "Counting the dots shows a total of 3."] * 20


def _checkpoint(tmp_path: Path) -> Path:
    ckpt = tmp_path / "official"
    shutil.copytree(FIXTURE, ckpt, ignore=shutil.ignore_patterns("ex_*", "layouts"))
    tokenizer = train_bpe_tokenizer(CORPUS, tmp_path / "tok", vocab_size=512)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "tok" / name, ckpt / name)
    assert tokenizer.image_ids.im_start == 512
    return ckpt


def test_predict_matches_direct_generation(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    image_path = FIXTURE / "ex_100x300/image.png"
    predictor = Predictor(ckpt)
    with Image.open(image_path) as img:
        answer = predictor(img.convert("RGB"), "Point to the dots.",
                           GenerationConfig(max_new_tokens=6))
    arrays = predictor.processor(Image.open(image_path).convert("RGB"), "Point to the dots.")
    model = from_pretrained(ckpt).eval()
    direct = generate(model, *(torch.as_tensor(arrays[k])[None] for k in
                               ("input_ids", "images", "image_masks", "image_input_idx")),
                      GenerationConfig(max_new_tokens=6))
    assert answer.tokens == direct.tokens[0] and len(answer.tokens) == 6
    assert main(["predict", "--checkpoint", str(ckpt), "--image", str(image_path),
                 "--prompt", "Point to the dots.", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == answer.text


def test_convert_round_trip_is_bit_exact(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    assert main(["convert", str(ckpt), str(tmp_path / "ours"), "--to", "ours"]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"),
                 "--to", "official"]) == 0
    a, b = from_pretrained(ckpt).state_dict(), from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["convert", str(ckpt), str(tmp_path / "ours"), "--to", "ours"]) == 2
    assert "exists" in capsys.readouterr().err
