"""``python -m engine`` is ``triotrade``."""

import sys

from engine.cli import main

sys.exit(main())
