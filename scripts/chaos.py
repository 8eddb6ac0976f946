"""``make chaos``: faults and bad inputs against a running deployment, with figures.

Run: ``.venv/bin/python scripts/chaos.py [--jobs N] [--hypothesis N] [--seed S]``
(``--help`` lists every option). The logic lives in :mod:`project.ops.chaos`;
the last output line is one JSON object with every figure, and the exit status
is non-zero if a job was lost or recorded twice, or a bad input ran.
"""

from __future__ import annotations

import sys

from project.ops.chaos import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
