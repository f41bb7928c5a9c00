"""``python -m molmo``: the ``molmo`` command line, for launchers that start a
module rather than a script (``torchrun ... -m molmo train CONFIG``)."""

import sys

from molmo.cli import main

sys.exit(main())
