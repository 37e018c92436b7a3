"""``python -m mgfast.pki ...``: the same as ``mgfast pki ...``."""

import sys

from mgfast.pki.cli import main

raise SystemExit(main(sys.argv[1:]))
