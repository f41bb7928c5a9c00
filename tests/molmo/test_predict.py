"""`molmo predict` (one image, or many as JSON lines) and `molmo convert` on the
official-format fixture model, with a real byte-level BPE tokenizer trained here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from molmo.cli import main
from molmo.generate import GenerationConfig, generate
from molmo.model.weights import from_pretrained
from molmo.predict import Answer, Predictor, Request, answer_batch
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


def _predict_many(ckpt: Path, inputs: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["predict", "--checkpoint", str(ckpt), "--inputs", str(inputs), "--out",
                 str(out), "--max-new-tokens", "4", *extra]) == 0
    assert not out.with_name(out.name + ".partial").exists()
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_jsonl_inputs_keep_order_and_bad_inputs_are_lines(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    shutil.copy(FIXTURE / "ex_100x300/image.png", tmp_path / "small.png")
    shutil.copy(FIXTURE / "ex_480x640/image.png", tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [{"image": "wide.png", "prompt": "Point to the dots.", "id": "a"},
            {"image": "broken.png", "prompt": "Point to the dots.", "id": "b"},
            {"image": "small.png", "prompt": "How many?", "id": "c"},
            {"image": "missing.png", "prompt": "How many?", "id": "d"},
            {"image": "small.png", "prompt": "Point to the dots.", "id": "e"}]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join([json.dumps(r) for r in rows] + ["{not json"]) + "\n")
    one = _predict_many(ckpt, jsonl, tmp_path / "one.jsonl", "--batch-size", "1")
    three = _predict_many(ckpt, jsonl, tmp_path / "three.jsonl", "--batch-size", "3")
    assert one == three  # padding in a batch changes no answer
    assert [line.get("id") for line in one] == ["a", "b", "c", "d", "e", None]
    assert [("error" in line) for line in one] == [False, True, False, True, False, True]
    assert one[1]["error"].startswith("broken.png: cannot read the image: cannot identify")
    assert one[3]["error"] == "missing.png: cannot read the image: No such file or directory"
    assert one[5]["error"].startswith("line 6: not JSON")
    assert (one[0]["width"], one[0]["height"], one[2]["width"]) == (640, 480, 300)
    predictor = Predictor(ckpt)
    with Image.open(tmp_path / "wide.png") as img:
        alone = predictor(img.convert("RGB"), "Point to the dots.",
                          GenerationConfig(max_new_tokens=4,
                                           stop_token_ids=(predictor.tokenizer.eos_id,)))
    assert one[0]["answer"] == alone.text and one[0]["points"] == alone.points == []
    assert "3 answered, 3 error(s)" in capsys.readouterr().err


def test_folder_inputs_ask_every_image_in_name_order(tmp_path):
    ckpt = _checkpoint(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(FIXTURE / "ex_100x300/image.png", folder / "b.png")
    shutil.copy(FIXTURE / "ex_480x640/image.png", folder / "a.png")
    (folder / "c.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: not asked")
    lines = _predict_many(ckpt, folder, tmp_path / "out.jsonl", "--prompt", "How many?")
    assert [line["image"] for line in lines] == ["a.png", "b.png", "c.png"]
    assert [line["prompt"] for line in lines] == ["How many?"] * 3
    assert "answer" in lines[0] and "answer" in lines[1] and "error" in lines[2]


def test_points_are_given_in_pixels_too(tmp_path):
    """The conversion alone: the tiny model writes no point tags, so its answer is fixed."""
    ckpt = _checkpoint(tmp_path)
    shutil.copy(FIXTURE / "ex_480x640/image.png", tmp_path / "wide.png")
    predictor = Predictor(ckpt)
    text = '<points x1="10.0" y1="50.0" x2="75.5" y2="25.0">dots</points>'
    predictor.answer_arrays = lambda examples, config=None: [  # type: ignore[method-assign]
        Answer(text, [(10.0, 50.0), (75.5, 25.0)], [])]
    [line] = answer_batch(predictor, [Request("wide.png", tmp_path / "wide.png", "Dots?", 7)])
    assert line["id"] == 7 and line["points"] == [[10.0, 50.0], [75.5, 25.0]]
    assert line["points_px"] == [[64.0, 240.0], [483.2, 120.0]]


def test_bfloat16_runs_on_cpu(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), "--image",
                 str(FIXTURE / "ex_100x300/image.png"), "--prompt", "How many?",
                 "--max-new-tokens", "3", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    assert Predictor(ckpt, dtype=torch.bfloat16).model.llm.lm_head.weight.dtype == torch.bfloat16
    assert capsys.readouterr().out.endswith("\n")
