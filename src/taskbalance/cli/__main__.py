"""``python -m taskbalance.cli``: the same as the ``taskbalance`` command."""

import sys

from taskbalance.cli import main

sys.exit(main())
