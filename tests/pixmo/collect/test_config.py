"""Collection settings and the operator's files: tokens long enough to be secrets, labels
distinct; each refusal one line naming the file."""

from __future__ import annotations

import json

import pytest

from pixmo.collect.config import CollectConfig, load_annotators, load_labels
from pixmo.errors import ConfigError, PixmoError


def test_annotators(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"x" * 16: "ann"}))
    assert load_annotators(path) == {"x" * 16: "ann"}
    for bad, says in (("[]", "expected a JSON object"), ("{}", "expected a JSON object"),
                      ("{", "not JSON"), (json.dumps({"short": "ann"}), "5 characters"),
                      (json.dumps({"x" * 16: ""}), "non-empty string"),
                      (json.dumps({"x" * 16: 3}), "non-empty string")):
        path.write_text(bad)
        with pytest.raises(PixmoError, match=says) as err:
            load_annotators(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert "x" * 16 not in str(err.value) and "xxxx" not in str(err.value)  # nor part
    path.write_text(json.dumps({"y" * 16: "ann", "x" * 16: ""}))
    with pytest.raises(PixmoError, match="annotator id of entry 2 must be"):
        load_annotators(path)


def test_labels(tmp_path):
    text, js = tmp_path / "labels.txt", tmp_path / "labels.json"
    text.write_text("red cup\n\n  dog \n")
    js.write_text('["red cup", "dog"]')
    assert load_labels(text) == load_labels(js) == ("red cup", "dog")
    for path, content, says in ((text, "a\na\n", "distinct"), (text, "\n", "non-empty"),
                                (js, '{"a": 1}', "JSON list"), (text, "x" * 201, "record 1")):
        path.write_text(content)
        with pytest.raises(PixmoError, match=says):
            load_labels(path)


def test_config_checks():
    cfg = CollectConfig(min_speech_s=30)
    assert cfg.speech.qc.min_speech_s == 30
    assert (cfg.audio.max_duration_s, cfg.audio.max_bytes) == (600.0, 32 << 20)
    for fields, field in (({"speakers_per_image": 0}, "speakers_per_image"),
                          ({"lease_s": 0}, "lease_s"), ({"max_points": 0}, "max_points"),
                          ({"min_speech_s": 700}, "min_speech_s")):
        with pytest.raises(ConfigError) as err:
            CollectConfig(**fields)
        assert err.value.field == f"CollectConfig.{field}"
