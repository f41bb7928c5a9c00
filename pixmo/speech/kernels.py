"""CTranslate2's CPU kernels pinned, so a transcript does not depend on the machine.

Same audio, same transcript, on any machine and in any engine: a transcript
depends on the audio, the model and the decoding settings. On CPU the
faster-whisper backend calls ``pin_ct2_kernels`` before it imports
``faster_whisper`` (and with it ``ctranslate2``), and each transcript records
the kernels it ran on (``runtime``).
"""

from __future__ import annotations

import logging
import os
import platform
import sys

from pixmo.errors import PixmoError

log = logging.getLogger(__name__)

# CTranslate2 picks its CPU kernels per machine: Intel MKL on Intel CPUs (whose
# sums change with the thread count) and oneDNN elsewhere, each at the widest
# instruction set it finds (AVX-512 kernels round differently from AVX2 ones).
# Pinned to oneDNN at AVX2, the same code runs on every x86-64 CPU with AVX2,
# and on it the transcripts of tests/data/speech are identical at 1 to 8
# threads (BENCHMARKS.md: what the pin costs). CT2_USE_MKL is read when
# ctranslate2 is imported, the ISA variables at the first model load.
CT2_KERNELS = {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get("AVX2"))


def pin_ct2_kernels() -> str:
    """Set ``CT2_KERNELS`` for this process before CTranslate2 loads; returns
    the kernels its CPU models will run on, for the transcripts' provenance.

    A CPU without AVX2 (or not x86-64) keeps the library's own choice, named
    ``native`` so that its transcripts say they came from other kernels. The
    variables also cap a oneDNN that torch has not started yet at AVX2.
    """
    if not _has_avx2():
        return "native"
    if "ctranslate2" in sys.modules and os.environ.get("CT2_USE_MKL") != "0":
        pins = " ".join(f"{k}={v}" for k, v in CT2_KERNELS.items())
        raise PixmoError("ctranslate2 was imported before its CPU kernels could be pinned: "
                         f"load the faster-whisper backend first, or set {pins}")
    for key, value in CT2_KERNELS.items():
        if os.environ.get(key, value) != value:
            log.info("%s=%s overridden by %s for reproducible transcripts",
                     key, os.environ[key], value)
        os.environ[key] = value
    return "onednn-avx2"
