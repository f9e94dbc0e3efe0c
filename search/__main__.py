"""``python -m search`` is the ``mixsearch`` command."""

import sys

from search.cli import main

sys.exit(main())
