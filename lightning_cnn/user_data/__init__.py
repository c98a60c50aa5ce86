"""``--data PATH``: training on the user's own data, a folder of images or an ``.npz`` of arrays.

- ``model_inputs``: what the model takes (inputs, shapes, integer ids, whether it scales its own pixels, output
  width), read from a converted twin or a documented model's spec.
- ``image_folder``: Keras's ``image_dataset_from_directory`` file listing and split, and safe image decoding.
- ``arrays``: an ``.npz`` of ``x_train``/``y_train`` (optionally ``x_val``/``x_test``, several inputs), loaded
  without pickle and converted to the twin's layout.
- ``loaders``: images streamed from disk through a DataLoader with workers, sharded by rank.
- ``datamodule``: ``UserDataModule``, the Lightning data module of either source.
"""

from ..data import DataError


class UserDataError(DataError, ValueError):
    """``--data`` that cannot be used as given (layout, file, shapes, labels, classes vs the model's outputs)."""
