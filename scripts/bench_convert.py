"""Converted twins vs their Keras originals, inference and training images/s: ``lightning-cnn-bench --acceptance``.

    python scripts/bench_convert.py --models ResNet50 --threads 1 --batches 8 --no-train

The same command as ``lightning-cnn-bench --acceptance`` (the logic is keras_ref/bench_twins.py; needs TensorFlow).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from keras_ref.bench_twins import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
