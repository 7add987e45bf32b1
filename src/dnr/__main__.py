"""``python -m dnr`` (what ``torchrun -m dnr`` runs): the ``dnr`` command."""

import sys

from dnr.cli import main

if __name__ == "__main__":
    sys.exit(main())
