"""``pixmo build --config build.yaml`` and ``--print-config``: every ``BuildConfig`` field from
the file, options over it, one-line errors naming the key, and a resumed build that refuses
a config other than the one its earlier run recorded."""

from __future__ import annotations

import contextlib

import pytest
import yaml

from pipelines.cli import main
from pixmo.build import BuildConfig, prepare_output
from pixmo.dataset.tables import read_dataset_json
from tests.one_line import assert_one_line
from tests.pixmo.build.test_resume import make_points_raw


def _printed(argv: list[str], capsys) -> dict:
    assert main(["build", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_spells_out_every_default(tmp_path, capsys):
    printed = _printed(["--raw", str(tmp_path), "--out", str(tmp_path / "ds")], capsys)
    assert printed == BuildConfig(raw_dir=str(tmp_path), name="ds").to_json()
    assert printed["shards"]["max_samples"] == 1000 and printed["captions"]["method"] == "cleanup"


def test_every_field_reads_back_from_a_file_and_options_win(tmp_path, capsys):
    resolved = BuildConfig(raw_dir="raw").to_json()
    resolved["name"] = "from-file"
    resolved["shards"]["max_samples"] = 5
    resolved["speech"]["qc"]["min_speech_s"] = 30.0
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(resolved))
    assert _printed(["--config", str(config)], capsys) == resolved  # every field, as given
    printed = _printed(["--config", str(config), "--shard-samples", "7", "--raw", "other",
                        "--out", str(tmp_path / "ds"), "--no-transcribe"], capsys)
    assert (printed["shards"]["max_samples"], printed["raw_dir"], printed["transcribe"]) == (
        7, "other", False)
    assert printed["name"] == "from-file"  # the file names it; --out does not rename it
    assert printed["speech"]["qc"]["min_speech_s"] == 30.0


def test_a_printed_config_given_back_resolves_to_itself(tmp_path, capsys):
    prompt = tmp_path / "merge.txt"
    prompt.write_text("Merge: «{transcripts}»\n\n  keep: 1e-05, null, 'yes'\n")
    argv = ["--raw", "raw", "--out", str(tmp_path / "ds"), "--caption-llm",
            "http://127.0.0.1:8000/v1", "--caption-model", "Qwen/Qwen2.5-7B-Instruct",
            "--caption-concurrency", "16", "--caption-merge-prompt", str(prompt),
            "--min-speech-s", "5", "--shard-samples", "7", "--no-transcribe"]
    assert main(["build", *argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    config = tmp_path / "build.yaml"
    config.write_text(printed)
    assert main(["build", "--config", str(config), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert yaml.safe_load(printed)["captions"]["llm"]["merge_prompt"] == prompt.read_text()


@pytest.mark.parametrize(("text", "says"), [
    ("captions: {colour: red}", "{config}, field config.captions: unknown keys ['colour']"),
    ("shards: {max_samples: 0}", "{config}: config.shards.max_samples must be >= 1, got 0"),
    ("speech: {qc: {min_speech_s: -1}}",
     "{config}: config.speech.qc.min_speech_s must be >= 0, got -1"),
    ("shards: {max_samples: many}",
     "{config}: config.shards.max_samples must be int, got 'many'"),
    ("captions: {method: gpt}", "{config}: config.captions.method must be one of ('cleanup'"),
    ("shards: [1, 2", "{config}: invalid YAML at line"),
    ("[1, 2]", "{config}: must be a mapping, got [1, 2]"),
    ("name: x", "--raw is required"),
])
def test_a_bad_file_is_one_line_naming_the_key(tmp_path, capsys, text, says):
    config = tmp_path / "build.yaml"
    config.write_text(text + "\n")
    argv = ["build", "--config", str(config), "--out", str(tmp_path / "out")]
    if "raw" not in says:
        argv += ["--raw", str(tmp_path)]
    assert main(argv) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build", says.format(config=config))


def test_an_option_over_the_file_is_named_by_the_option(tmp_path, capsys):
    config = tmp_path / "build.yaml"
    config.write_text("shards: {max_samples: 5}\n")
    assert main(["build", "--config", str(config), "--raw", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--shard-samples", "0"]) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build",
                    "--shard-samples must be >= 1, got 0")


def test_a_resumed_build_refuses_another_config(tmp_path, capsys):
    raw, out = make_points_raw(tmp_path / "raw", 3), tmp_path / "out"
    args = ["build", "--raw", str(raw), "--out", str(out), "--no-transcribe"]
    assert main([*args, "--shard-samples", "2"]) == 0
    capsys.readouterr()
    before = (out / "dataset.json").read_bytes()
    assert main([*args, "--shard-samples", "3", "--name", "other"]) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build",
                    f"{out}: was built with another config (name, shards.max_samples differ)")
    assert (out / "dataset.json").read_bytes() == before  # refused before anything changed
    assert main([*args, "--shard-samples", "2"]) == 0  # the same config resumes
    assert main([*args, "--shard-samples", "3", "--mode", "overwrite"]) == 0
    assert read_dataset_json(out / "dataset.json")["build_config"]["shards"]["max_samples"] == 3


def test_an_extend_refuses_another_config_but_takes_new_input(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["build", "--out", str(out), "--no-transcribe", "--shard-samples", "2"]
    assert main([*args, "--raw", str(make_points_raw(tmp_path / "raw1", 3))]) == 0
    capsys.readouterr()
    before = (out / "dataset.json").read_bytes()
    raw2 = str(make_points_raw(tmp_path / "raw2", 2, first=3))
    assert main([*args, "--raw", raw2, "--mode", "extend", "--caption-concurrency", "3",
                 "--min-speech-s", "1"]) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build",
                    f"{out}: was built with another config (speech.qc.min_speech_s differ)")
    assert (out / "dataset.json").read_bytes() == before
    assert main([*args, "--raw", raw2, "--mode", "extend", "--caption-concurrency", "3"]) == 0
    description = read_dataset_json(out / "dataset.json")
    assert description["counts"]["samples"] == 5
    assert description["build_config"]["raw_dir"] == raw2


def test_an_interrupted_build_records_its_config_for_the_resume(tmp_path):
    """No dataset.json yet: the config the interrupted run staged is the one compared."""
    out = tmp_path / "out"
    prepare_output(out, "resume", BuildConfig(raw_dir="raw"))
    assert not (out / "dataset.json").exists()
    with pytest.raises(ValueError, match=r"another config \(captions.duplicate_overlap, "
                       r"transcribe differ\)"):
        prepare_output(out, "resume", BuildConfig.load(None, {
            "raw_dir": "raw", "transcribe": False, "captions.duplicate_overlap": 0.5}))
    prepare_output(out, "resume", BuildConfig(raw_dir="raw"))
    prepare_output(out, "overwrite", BuildConfig(raw_dir="other"))
    prepare_output(out, "resume", BuildConfig(raw_dir="other"))


def test_speed_settings_do_not_count_as_another_config(tmp_path):
    out = tmp_path / "out"
    prepare_output(out, "resume", BuildConfig(raw_dir="raw"))
    prepare_output(out, "resume", BuildConfig.load(None, {"raw_dir": "raw",
                                                         "captions.concurrency": 32}))


@pytest.mark.parametrize(("argv", "says"), [
    (["--caption-method", "llm"], "--caption-llm is required when method is 'llm'"),
    (["--caption-device", "cuda"], "--caption-llm is required"),
    (["--caption-llm", "ftp://x/v1"], "--caption-llm must be http(s) or hf:DIR, got 'ftp://x/v1'"),
    (["--caption-llm", "http://127.0.0.1:9/v1"], "--caption-model"),
    (["--caption-llm", "hf:/m", "--caption-concurrency", "0"],
     "--caption-concurrency must be >= 1, got 0"),
    (["--caption-merge-prompt", "{missing}"], "argument --caption-merge-prompt: cannot read"),
])
def test_caption_options_are_one_line_errors(tmp_path, capsys, argv, says):
    argv = [a.format(missing=tmp_path / "none.txt") for a in argv]
    with pytest.raises(SystemExit) if "argument" in says else contextlib.nullcontext():
        assert main(["build", "--raw", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build", says)


def test_caption_llm_alone_means_the_llm_method(tmp_path, capsys):
    printed = _printed(["--raw", "r", "--caption-llm", "hf:/models/tiny"], capsys)
    assert printed["captions"]["method"] == "llm"
    assert printed["captions"]["llm"]["base_url"] == "hf:/models/tiny"
    config = tmp_path / "build.yaml"
    config.write_text("captions: {method: cleanup}\n")
    printed = _printed(["--config", str(config), "--raw", "r", "--caption-llm", "hf:/m"], capsys)
    assert printed["captions"]["method"] == "cleanup"  # the file says so


def test_caption_device_sets_where_a_local_model_runs(tmp_path, capsys):
    argv = ["--raw", "r", "--caption-llm", "hf:/m"]
    assert _printed(argv, capsys)["captions"]["llm"]["device"] == "auto"
    assert _printed([*argv, "--caption-device", "cpu"], capsys)["captions"]["llm"][
        "device"] == "cpu"
    config = tmp_path / "build.yaml"
    config.write_text("captions: {llm: {base_url: 'hf:/m', device: cuda}}\n")
    assert _printed(["--config", str(config), "--raw", "r"], capsys)["captions"]["llm"][
        "device"] == "cuda"
    assert _printed(["--config", str(config), "--raw", "r", "--caption-device", "cpu"],
                    capsys)["captions"]["llm"]["device"] == "cpu"


def test_a_local_caption_model_is_checked_before_the_engine_starts(tmp_path, capsys):
    raw = make_points_raw(tmp_path / "raw", 1)
    assert main(["build", "--raw", str(raw), "--out", str(tmp_path / "out"), "--no-transcribe",
                 "--caption-llm", f"hf:{tmp_path / 'none'}"]) == 2
    assert_one_line(capsys.readouterr().err, "pixmo", "build",
                    f"{tmp_path / 'none'}: no such model directory (no config.json)")
    assert not (tmp_path / "out").exists()
