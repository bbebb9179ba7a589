"""``python -m graceful``: the ``graceful`` command."""

import sys

from graceful._cli import main

sys.exit(main())
