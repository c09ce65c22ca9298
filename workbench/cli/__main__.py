"""``python -m workbench.cli``: the ``workbench`` command."""

import sys

from .app import main

sys.exit(main())
