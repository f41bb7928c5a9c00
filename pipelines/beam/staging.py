"""The toolkit's own code for remote Beam workers: its wheel, built from this source tree.

A runner whose workers run elsewhere (Dataflow, Flink, Spark, a portable job
server) unpickles the build's DoFns there, and they are classes of
``pipelines.beam.graph`` calling ``pixmo``: the workers must have the toolkit
installed. ``for_workers`` builds its wheel (pure Python, ``py3-none-any``)
from a copy of the source tree, once per tree (cached under the system's
temporary folder by a hash of the files), and adds ``--extra_package`` to the
pipeline's options, which Beam stages and each worker pip-installs at start.
Nothing is added when the workers are this machine's Beam (the direct runners,
the LOOPBACK environment) or when the options already say how workers get the
code (``--extra_package``, ``--setup_file``, ``--sdk_container_image``).
Building needs no network: ``pip wheel --no-deps --no-build-isolation
--no-index`` with the setuptools this environment already has.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from apache_beam.options.pipeline_options import (
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pixmo.errors import PixmoError

SOURCE = Path(__file__).resolve().parents[2]
TREE = ("pyproject.toml", "README.md", "pixmo", "pipelines", "molmo", "schemas")
LOCAL_RUNNERS = {"fnapi", "direct", "switchingdirect", "bundlebaseddirect", "prism",
                 "interactive"}
CACHE = Path(tempfile.gettempdir()) / "pixmo-wheels"


def _runner_name(options: PipelineOptions) -> str:
    """``--runner`` as Beam resolves it: any case, with or without a module
    path and the ``Runner`` suffix."""
    name = str(options.view_as(StandardOptions).runner or "direct").rsplit(".", 1)[-1].lower()
    return name.removesuffix("runner")


def needs_staging(beam_args: Sequence[str]) -> bool:
    """Whether the runner's workers are remote processes that do not have the
    toolkit unless it is staged, and the options do not already provide it."""
    options = PipelineOptions(list(beam_args))
    setup = options.view_as(SetupOptions)
    environment = str(options.view_as(PortableOptions).environment_type or "").upper()
    return not (_runner_name(options) in LOCAL_RUNNERS or environment == "LOOPBACK"
                or setup.extra_packages or setup.setup_file
                or options.view_as(WorkerOptions).sdk_container_image)


def for_workers(beam_args: Sequence[str]) -> list[str]:
    """``beam_args``, with ``--extra_package`` naming the toolkit's wheel when
    ``needs_staging``."""
    if not needs_staging(beam_args):
        return list(beam_args)
    return [*beam_args, f"--extra_package={wheel()}"]


def _files(root: Path) -> list[Path]:
    """The files of ``TREE`` under ``root`` that go into the wheel, in a fixed order."""
    out = []
    for name in TREE:
        path = root / name
        found = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        out += [p for p in found if p.is_file() and "__pycache__" not in p.parts
                and p.suffix != ".pyc"]
    return out


def tree_hash(root: Path = SOURCE) -> str:
    """A hash of the source files' paths and bytes: the wheel's cache key."""
    digest = hashlib.sha256()
    for path in _files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def wheel(root: Path = SOURCE, cache: Path | None = None) -> Path:
    """The toolkit's wheel for this source tree: built once, then taken from
    ``cache`` (default ``CACHE``)."""
    cache = CACHE if cache is None else cache
    if not (root / "pyproject.toml").is_file():
        raise PixmoError(f"cannot stage the toolkit for remote Beam workers: {root} is not "
                         "its source tree; pass --extra_package, --setup_file or "
                         "--sdk_container_image", field="runner")
    done = cache / tree_hash(root)
    if not done.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as work:
            _build(root, Path(work))
            try:
                os.replace(Path(work) / "dist", done)
            except OSError:  # another build of the same tree got there first
                if not done.is_dir():
                    raise
    return next(done.glob("*.whl"))


def _build(root: Path, work: Path) -> None:
    """Build the wheel into ``work/dist`` from a copy of the tree in ``work/src``
    (setuptools writes build/ and egg-info/ next to its input; not into ours)."""
    src = work / "src"
    for path in _files(root):
        (src / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, src / path.relative_to(root))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(work / "dist"), str(src)],
        capture_output=True, text=True, check=False)
    if done.returncode != 0 or not list((work / "dist").glob("*.whl")):
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise PixmoError(f"cannot build the toolkit's wheel for remote Beam workers ({last}); "
                         "pass --extra_package, --setup_file or --sdk_container_image",
                         field="runner")

