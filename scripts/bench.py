"""``make bench``: our pipeline against a bare Celery canvas with the same hops.

Run: ``.venv/bin/python scripts/bench.py [--jobs N] [--full] [--profile DIR]``
(``--help`` lists every option). The logic lives in :mod:`project.ops.bench`;
the last output line is one JSON object with every figure.
"""

from __future__ import annotations

import sys

from project.ops.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
