"""Molmo tokenizer: image-token id rule, revision check, BPE training, atomic save."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import tokenizers

from molmo.preprocess import tokenizer as tokmod
from molmo.preprocess.processor import MolmoProcessor
from molmo.preprocess.tokenizer import (
    IMAGE_TOKENS,
    ImageTokenIds,
    MolmoTokenizer,
    train_bpe_tokenizer,
)
from pixmo.errors import PixmoError
from tests.paths import OFFICIAL_TINY

CORPUS = (OFFICIAL_TINY / "README.md").read_text("utf-8")
LINES = [line for line in CORPUS.splitlines() if line.strip()]
SAMPLES = [
    " User: What is in this image? Assistant:",
    ' Counting the <points x1="12.5" y1="40.0"> shows a total of 3.',
    "Ünïcödé ✓ 你好, emoji 🦜 and tabs\tand\nnewlines",
    "zqxj vvv wholly unseen wordz 12345",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> tuple[MolmoTokenizer, Path]:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    return train_bpe_tokenizer(LINES, out, vocab_size=600), out


def _base_tokenizer_dir(tmp_path: Path, extra: list[str] | None = None) -> tuple[Path, int]:
    """A real byte-level BPE without Molmo tokens (like a base LLM tokenizer), optionally with
    ``extra`` special tokens appended right after its vocabulary."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(LINES, trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if extra:
        tok.add_special_tokens(extra)
    d = tmp_path / "base"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    return d, size


def test_bpe_round_trips_and_compresses(bpe):
    tok, out = bpe
    for text in SAMPLES + LINES[:20]:
        assert tok.decode(tok.encode(text)) == text
    corpus_bytes = sum(len(line.encode()) for line in LINES)
    corpus_tokens = sum(len(tok.encode(line)) for line in LINES)
    assert corpus_tokens < 0.6 * corpus_bytes  # merges were learned, not just bytes
    plain = [line for line in LINES if not any(t in line for t in IMAGE_TOKENS)]
    assert max(max(tok.encode(line)) for line in plain) < 600  # ids of real text stay below


def test_bpe_image_token_ids_follow_official_rule(bpe):
    tok, _ = bpe
    assert tok.vocab_size == 600
    assert tok.image_ids == ImageTokenIds(600, 601, 602, 603, 604)
    assert [tok.encode(t) for t in IMAGE_TOKENS] == [[600], [601], [602], [603], [604]]
    assert tok.eos_id == 0 and tok.bos_id is None and tok.pad_id == 0
    assert tok.decode([602, *tok.encode(" hi"), 0]) == " hi"
    assert tok.decode([602], skip_special_tokens=False) == "<im_patch>"
    assert MolmoProcessor(tok).bos_id == 0  # no BOS: EOS is prepended, as for Qwen2


def test_saved_directory_reloads_identically(bpe):
    tok, out = bpe
    assert sorted(p.name for p in out.parent.iterdir()) == ["bpe"]  # no temporary left over
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|endoftext|>" and cfg["molmo_vocab_size"] == 600
    again = MolmoTokenizer.from_dir(out)
    assert again.image_ids == tok.image_ids and again.eos_id == tok.eos_id
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text)
    clone = pickle.loads(pickle.dumps(again))  # DataLoader workers get a pickled copy
    assert clone.encode(SAMPLES[2]) == tok.encode(SAMPLES[2])


def test_base_tokenizer_is_padded_to_vocab_size(tmp_path):
    d, size = _base_tokenizer_dir(tmp_path)
    with pytest.raises(PixmoError, match="pass vocab_size"):
        MolmoTokenizer.from_dir(d)
    tok = MolmoTokenizer.from_dir(d, vocab_size=size + 21)
    base = size + 21
    assert tok.image_ids.as_tuple() == tuple(range(base, base + 5))
    assert len(tok) == base + 5
    assert tok.encode("|<EXTRA_TOKENS_0>|") == [size]  # official dummy padding tokens
    assert tok.encode("<|image|>") == [base + 4]
    with pytest.raises(PixmoError, match="more than the model vocab_size"):
        MolmoTokenizer.from_dir(d, vocab_size=size - 1)


def test_unpadded_revision_is_refused(tmp_path):
    """Image tokens right after the base vocab (like the early Molmo-7B-D upload) are refused
    when the model's vocab_size says they belong further up."""
    d, size = _base_tokenizer_dir(tmp_path, extra=list(IMAGE_TOKENS))
    with pytest.raises(PixmoError, match="do not follow the official rule"):
        MolmoTokenizer.from_dir(d, vocab_size=size + 21)
    tok = MolmoTokenizer.from_dir(d)  # consistent on its own: vocab_size is read off the file
    assert tok.vocab_size == size and tok.image_ids.im_col == size + 3


def test_partial_image_tokens_are_refused(tmp_path):
    d, size = _base_tokenizer_dir(tmp_path, extra=["<im_start>", "<im_end>"])
    with pytest.raises(PixmoError, match="only some Molmo image tokens"):
        MolmoTokenizer.from_dir(d, vocab_size=size + 8)


def test_bos_and_eos_from_tokenizer_config(tmp_path):
    d, size = _base_tokenizer_dir(tmp_path, extra=["<s>"])
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "<|endoftext|>"})
    )
    tok = MolmoTokenizer.from_dir(d, vocab_size=size + 8)
    assert tok.bos_id == size and tok.eos_id == 0
    assert MolmoProcessor(tok).bos_id == size
    with pytest.raises(PixmoError, match="'</s>' is not in the vocabulary"):
        MolmoTokenizer.from_dir(d, vocab_size=size + 8, eos_token="</s>")


def test_save_is_atomic(bpe, tmp_path, monkeypatch):
    tok, _ = bpe
    target = tmp_path / "tok"
    tok.save(target)
    with pytest.raises(PixmoError, match="exists and is not empty"):
        tok.save(target)
    tok.save(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokmod.json, "dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        tok.save(target, overwrite=True)
    # Neither the new directory nor a temporary appeared, and the old one is intact.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    monkeypatch.undo()
    assert MolmoTokenizer.from_dir(target).encode(SAMPLES[0]) == tok.encode(SAMPLES[0])


def test_bpe_vocab_size_too_small(tmp_path):
    with pytest.raises(PixmoError, match="at least 258"):
        train_bpe_tokenizer(LINES, tmp_path / "t", vocab_size=100)
