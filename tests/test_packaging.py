"""The wheel carries the schemas and both commands; the library stays free of
engines and leaves logging alone."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pixmo.schema import SCHEMA_NAMES
from tests.paths import REPO

REPO = REPO


def test_wheel_ships_schemas_and_console_scripts(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO)],
                   check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = tmp_path.glob("pixmo_toolkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in SCHEMA_NAMES:
        assert f"pixmo/schemas/{schema}.json" in names
    assert {"pixmo/dataset/writer.py", "pipelines/cli.py", "molmo/__init__.py"} <= names
    assert {f"pixmo/collect/static/{name}" for name in ("index.html", "app.js", "style.css")
            } <= names  # the collect app's page
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pixmo = pipelines.cli:main" in text
    assert "molmo = molmo.cli:main" in text


def test_library_imports_no_engine_and_keeps_root_logger():
    code = (
        "import logging, pkgutil, importlib, sys\n"
        "root = logging.getLogger(); before = (root.level, list(root.handlers))\n"
        "import pixmo\n"
        "for m in pkgutil.iter_modules(pixmo.__path__):\n"
        "    importlib.import_module('pixmo.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('apache_beam', 'ray')"
        " or n.startswith('torch.distributed'))\n"
        "assert not bad, bad\n"
        "assert (root.level, list(root.handlers)) == before\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_console_script_runs():
    out = subprocess.run([str(Path(sys.executable).parent / "pixmo"), "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("inspect", "validate"):
        assert command in out.stdout
