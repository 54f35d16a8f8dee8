"""``python -m smsgw`` is the ``smsgw`` command."""

import sys

from smsgw.cli import main

sys.exit(main())
