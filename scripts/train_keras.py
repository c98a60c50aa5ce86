"""`python scripts/train_keras.py --help`: the command line is lightning_cnn/cli/train_keras.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.train_keras import main

if __name__ == "__main__":
    sys.exit(main())
