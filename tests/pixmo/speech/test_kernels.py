"""CTranslate2's kernels pinned before it loads: transcripts byte for byte the
same whatever the thread and kernel environment says, a one-line error when
the pin comes too late, and the variables the pin sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pixmo.errors import PixmoError
from pixmo.speech.kernels import CT2_KERNELS, pin_ct2_kernels
from tests.paths import SPEECH


def transcribe_in_fresh_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "transcribe", str(SPEECH / "kitchen.opus"),
         str(SPEECH / "garden.opus"), "--min-speech-s", "5", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_transcripts_do_not_depend_on_the_thread_environment():
    """Environment variables that set OpenMP threads or CTranslate2's kernels
    (unpinned, CT2_USE_MKL=1 alone changes these transcripts on an AMD EPYC)
    leave the output byte for byte the same."""
    plain = transcribe_in_fresh_process({})
    other = transcribe_in_fresh_process({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                         "CT2_USE_MKL": "1", "CT2_FORCE_CPU_ISA": "GENERIC",
                                         "ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert plain.returncode == 0 and other.returncode == 0, plain.stderr + other.stderr
    rows = [json.loads(line) for line in plain.stdout.splitlines()]
    assert [r["transcript"]["cpu_threads"] for r in rows] == [1, 1]
    assert other.stdout == plain.stdout


def test_kernels_that_cannot_be_pinned_any_more_are_a_one_line_error():
    script = ("import ctranslate2; from pixmo.speech.config import SpeechConfig; "
              "from pixmo.speech.backends import load_backend; "
              "load_backend(SpeechConfig(device='cpu'))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "CT2_USE_MKL"},
                         timeout=300)
    assert run.returncode != 0
    assert "ctranslate2 was imported before its CPU kernels could be pinned" in run.stderr
    assert "CT2_USE_MKL=0 CT2_FORCE_CPU_ISA=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" in run.stderr



def test_pin_sets_the_kernel_variables_over_the_environment(monkeypatch):
    for key in CT2_KERNELS:  # monkeypatch puts back what the pin overwrites
        monkeypatch.setenv(key, "1" if key == "CT2_USE_MKL" else "AVX512")
    monkeypatch.delitem(sys.modules, "ctranslate2", raising=False)
    assert pin_ct2_kernels() == "onednn-avx2"
    assert {k: os.environ[k] for k in CT2_KERNELS} == {
        "CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_pin_refuses_once_ctranslate2_has_loaded_with_other_kernels(monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", object())
    monkeypatch.setenv("CT2_USE_MKL", "1")
    with pytest.raises(PixmoError, match="ctranslate2 was imported before"):
        pin_ct2_kernels()
    monkeypatch.setenv("CT2_USE_MKL", "0")  # already pinned: loading again is fine
    assert pin_ct2_kernels() == "onednn-avx2"
