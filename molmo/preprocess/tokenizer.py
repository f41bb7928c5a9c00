"""Text tokenizer for Molmo: a Hugging Face ``tokenizers`` tokenizer plus the five image tokens.

Molmo adds ``<im_start>``, ``<im_end>``, ``<im_patch>``, ``<im_col>`` and ``<|image|>`` to the
base LLM tokenizer. The official training code first pads the tokenizer with dummy
``|<EXTRA_TOKENS_i>|`` tokens up to the model's ``vocab_size``, so the five tokens always get ids
``vocab_size + 0..4`` and index ``wte.new_embedding`` rows 0..4. Some hub revisions list other
ids (e.g. an unpadded 151646.. for Molmo-7B-D), which would hit untrained embedding rows, so this
module never guesses: ids found in a tokenizer file must match the rule or loading fails.

The preprocessor only needs the small :class:`TextTokenizer` protocol, so a test can pass any
object with ``encode``/``decode`` and the ids. ``tokenizers`` is imported only where it is used.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pixmo.atomic import atomic_directory
from pixmo.errors import PixmoError

logger = logging.getLogger(__name__)

IMAGE_TOKENS: tuple[str, ...] = ("<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<|image|>")
EXTRA_TOKEN_TEMPLATE = "|<EXTRA_TOKENS_{}>|"
DEFAULT_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class ImageTokenIds:
    """Ids of the five Molmo tokens, in the official order."""

    im_start: int
    im_end: int
    im_patch: int
    im_col: int
    image_prompt: int

    @classmethod
    def after_vocab(cls, vocab_size: int) -> ImageTokenIds:
        """The official rule: ids ``vocab_size + 0..4`` (rows 0..4 of ``new_embedding``)."""
        return cls(*(vocab_size + i for i in range(len(IMAGE_TOKENS))))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.im_start, self.im_end, self.im_patch, self.im_col, self.image_prompt)


@runtime_checkable
class TextTokenizer(Protocol):
    """What the preprocessor needs from a tokenizer.

    ``bos_id`` is None for Qwen2/OLMo-style tokenizers; the preprocessor then uses ``eos_id``
    as BOS, as the official code does.
    """

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def image_ids(self) -> ImageTokenIds: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores a token either as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class MolmoTokenizer:
    """A ``tokenizers.Tokenizer`` with the Molmo image tokens at ``vocab_size + 0..4``.

    ``vocab_size`` is the MODEL's vocab_size (config.json), which may exceed the tokenizer's own
    size (Qwen2: 151643 real tokens, vocab_size 152064). When the tokenizer already holds the
    image tokens their ids must equal the rule; when it does not, it is padded with dummy tokens
    up to ``vocab_size`` and the image tokens are appended, as the official code does.
    Picklable, so DataLoader workers can hold one.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token: str,
        bos_token: str | None = None,
        pad_token: str | None = None,
        vocab_size: int | None = None,
        source: str = "<tokenizer>",
    ) -> None:
        self._tok = tokenizer
        self.source = source
        self.vocab_size = self._attach_image_tokens(vocab_size)
        self._image_ids = ImageTokenIds.after_vocab(self.vocab_size)
        self._eos_id = self._required_id(eos_token, "eos_token")
        self._bos_id = None if bos_token is None else self._required_id(bos_token, "bos_token")
        self._pad_id = (
            self._eos_id if pad_token is None else self._required_id(pad_token, "pad_token")
        )

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        vocab_size: int | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
    ) -> MolmoTokenizer:
        """Load ``tokenizer.json`` (and ``tokenizer_config.json`` for eos/bos/pad if present).

        Arguments override the config file. ``vocab_size`` must be given when the file does not
        already hold the image tokens (pass the model's config.json ``vocab_size``).
        """
        tokenizers = _import_tokenizers()
        directory = Path(path)
        tok_file = directory / "tokenizer.json"
        if not tok_file.is_file():
            raise PixmoError("no tokenizer.json in the tokenizer directory", file=str(directory))
        cfg: dict[str, Any] = {}
        cfg_file = directory / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise PixmoError(f"invalid JSON: {exc}", file=str(cfg_file)) from exc
        eos = eos_token or _token_content(cfg.get("eos_token")) or DEFAULT_EOS
        bos = bos_token if bos_token is not None else _token_content(cfg.get("bos_token"))
        pad = _token_content(cfg.get("pad_token"))
        if vocab_size is None and isinstance(cfg.get("molmo_vocab_size"), int):
            vocab_size = cfg["molmo_vocab_size"]
        return cls(
            tokenizers.Tokenizer.from_file(str(tok_file)),
            eos_token=eos,
            bos_token=bos,
            pad_token=pad,
            vocab_size=vocab_size,
            source=str(tok_file),
        )

    def _attach_image_tokens(self, vocab_size: int | None) -> int:
        found = [self._tok.token_to_id(t) for t in IMAGE_TOKENS]
        named = dict(zip(IMAGE_TOKENS, found, strict=True))
        if all(i is not None for i in found):
            base = found[0] if vocab_size is None else vocab_size
            expected = list(ImageTokenIds.after_vocab(base).as_tuple())
            if found != expected:
                raise PixmoError(
                    f"image token ids {named} do not follow the official "
                    f"rule vocab_size + 0..4 = {expected} (vocab_size {base}); this tokenizer "
                    "revision would index the wrong embedding rows",
                    file=self.source,
                    field="added_tokens",
                )
            return base
        if any(i is not None for i in found):
            raise PixmoError(
                f"tokenizer holds only some Molmo image tokens: {named}",
                file=self.source,
                field="added_tokens",
            )
        if vocab_size is None:
            raise PixmoError(
                "tokenizer has no Molmo image tokens; pass vocab_size (the model config's "
                "vocab_size) so they get the official ids vocab_size + 0..4",
                file=self.source,
            )
        size = self._tok.get_vocab_size(with_added_tokens=True)
        if size > vocab_size:
            raise PixmoError(
                f"tokenizer has {size} tokens, more than the model vocab_size {vocab_size}",
                file=self.source,
            )
        self._add_special([EXTRA_TOKEN_TEMPLATE.format(i) for i in range(vocab_size - size)])
        self._add_special(list(IMAGE_TOKENS))
        got = [self._tok.token_to_id(t) for t in IMAGE_TOKENS]
        if got != list(ImageTokenIds.after_vocab(vocab_size).as_tuple()):
            raise PixmoError(
                f"padding the tokenizer to {vocab_size} gave image token ids {got}; the "
                "tokenizer's ids are not contiguous",
                file=self.source,
            )
        return vocab_size

    def _add_special(self, tokens: list[str]) -> None:
        if not tokens:
            return
        from tokenizers import AddedToken

        self._tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in tokens]
        )

    def _required_id(self, token: str, field: str) -> int:
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise PixmoError(
                f"token {token!r} is not in the vocabulary", file=self.source, field=field
            )
        return token_id

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def image_ids(self) -> ImageTokenIds:
        return self._image_ids

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any BOS/EOS (the preprocessor places those)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write tokenizer.json and tokenizer_config.json into ``path``, whole or not at all."""
        cfg = {
            "eos_token": self._tok.id_to_token(self._eos_id),
            "bos_token": None if self._bos_id is None else self._tok.id_to_token(self._bos_id),
            "pad_token": self._tok.id_to_token(self._pad_id),
            "molmo_vocab_size": self.vocab_size,
            "molmo_image_tokens": dict(zip(IMAGE_TOKENS, self._image_ids.as_tuple(), strict=True)),
        }
        return _write_dir_atomic(Path(path), self._tok, cfg, overwrite=overwrite)


def _write_dir_atomic(target: Path, tok: Any, cfg: dict[str, Any], *, overwrite: bool) -> Path:
    """Build the directory under a temporary name beside ``target``, then rename it into place."""
    with atomic_directory(target, overwrite=overwrite) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", "utf-8")
    return target


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 4096,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> MolmoTokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` (for from-scratch demo models) and save it.

    ``vocab_size`` counts the BPE vocabulary including ``<|endoftext|>`` (id 0, used as EOS and as
    BOS, like Qwen2); the five image tokens follow at ``vocab_size + 0..4``. Byte-level, so any
    UTF-8 text round-trips.
    """
    tokenizers = _import_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise PixmoError(
            f"vocab_size must be at least 258 (256 bytes + EOS), got {vocab_size}",
            field="vocab_size",
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[DEFAULT_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    trained = tok.get_vocab_size(with_added_tokens=True)
    logger.info("trained byte-level BPE: %d tokens (asked %d)", trained, vocab_size)
    molmo_tok = MolmoTokenizer(tok, eos_token=DEFAULT_EOS, vocab_size=vocab_size, source="<bpe>")
    molmo_tok.save(out_dir, overwrite=overwrite)
    return molmo_tok


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "molmo.preprocess.tokenizer needs the 'tokenizers' package: "
            "pip install 'pixmo-toolkit[train]'"
        ) from exc
    return tokenizers
