"""`python scripts/bench.py --help`: the command line is lightning_cnn/cli/bench.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
