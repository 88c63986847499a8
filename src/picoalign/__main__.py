"""``python -m picoalign`` = the ``picoalign`` command (also what torchrun launches)."""

import sys

from picoalign.cli.commands import main

sys.exit(main())
