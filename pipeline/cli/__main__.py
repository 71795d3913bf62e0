"""``python -m pipeline.cli``: the ``fraud`` command without its installed script."""

import sys

from pipeline.cli.main import main

sys.exit(main())
