"""`python scripts/crossval.py --help`: the command line is lightning_cnn/cli/crossval.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.crossval import main

if __name__ == "__main__":
    sys.exit(main())
