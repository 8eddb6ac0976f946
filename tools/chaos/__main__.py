"""``python -m tools.chaos``."""

import sys

from tools.chaos.chaos import main

sys.exit(main(sys.argv[1:]))
