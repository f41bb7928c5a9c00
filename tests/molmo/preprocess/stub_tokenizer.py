"""The official tiny fixture's stand-in tokenizer, shared by the preprocessing tests.

Fixture: tests/data/molmo_official_tiny (see its README). Text ids: each UTF-8 byte b ->
(37*b + 11) % 500, special ids from special_tokens.json.
"""

from __future__ import annotations

import json

from molmo.preprocess.tokenizer import ImageTokenIds
from tests.paths import OFFICIAL_TINY

DATA = OFFICIAL_TINY
SPECIAL = json.loads((DATA / "special_tokens.json").read_text())


class StubTokenizer:
    """The fixture's stand-in tokenizer (bytes -> (37 b + 11) mod 500), invertible."""

    bos_id = None
    eos_id = SPECIAL["eos_id"]
    image_ids = ImageTokenIds(
        SPECIAL["im_start"],
        SPECIAL["im_end"],
        SPECIAL["im_patch"],
        SPECIAL["im_col"],
        SPECIAL["image_prompt"],
    )

    def encode(self, text: str) -> list[int]:
        return [(37 * b + 11) % 500 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        inv = pow(37, -1, 500)
        return bytes(((i - 11) * inv) % 500 for i in ids if i != self.eos_id).decode("utf-8")
