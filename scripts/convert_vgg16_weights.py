"""`python scripts/convert_vgg16_weights.py --help`: the command line is lightning_cnn/cli/convert_vgg16_weights.py (`pip install -e .` first)."""

import sys

from lightning_cnn.cli.convert_vgg16_weights import main

if __name__ == "__main__":
    sys.exit(main())
