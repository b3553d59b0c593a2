"""``python -m precedents.cli``: the same as the ``precedents`` command."""

import sys

from . import main

sys.exit(main())
