"""``python -m dnr``: the ``dnr`` command (the entry ``torchrun -m dnr`` will use)."""

import sys

from dnr.cli import main

if __name__ == "__main__":
    sys.exit(main())
