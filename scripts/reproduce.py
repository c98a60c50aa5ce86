"""`python scripts/reproduce.py --help`: the command line is lightning_cnn/cli/reproduce.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
