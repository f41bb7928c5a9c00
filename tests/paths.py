"""Where the tests find the repository and their checked-in data, wherever a test file sits."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
SPEECH = DATA / "speech"
OFFICIAL_TINY = DATA / "molmo_official_tiny"
