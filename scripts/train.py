"""`python scripts/train.py --help`: the command line is lightning_cnn/cli/train.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
