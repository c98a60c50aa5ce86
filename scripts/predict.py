"""`python scripts/predict.py --help`: the command line is lightning_cnn/cli/predict.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
