"""``python -m foldconv``: the same as the ``foldconv`` command."""

import sys

from foldconv.cli import main

sys.exit(main())
