"""``python -m llmdual.cli``: the ``llmdual`` command without installing the console script."""

import sys

from llmdual.cli import main

sys.exit(main())
