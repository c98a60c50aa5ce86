"""`python scripts/cifar10_report.py --help`: the command line is lightning_cnn/cli/cifar10_report.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.cifar10_report import main

if __name__ == "__main__":
    sys.exit(main())
