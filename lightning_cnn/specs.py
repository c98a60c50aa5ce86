"""The documented models and their recipes: one framework-neutral table.

Both sides build from this table (``keras_ref`` makes Keras layers, ``lightning_cnn`` makes torch modules), so
the architecture, parameter count and training recipe of an id cannot drift between frameworks. Layer lists
follow the source documents in order, including separate ``Activation`` layers where a document used them.
Everything here is plain data: importing it needs neither torch nor TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import UserError

# --- layers -------------------------------------------------------------------------------------------------
# Each layer is (kind, options). Options use Keras's names; each builder maps them to its own framework.


def conv(filters: int, kernel: int = 3, padding: str = "valid", activation: str | None = None, strides: int = 1):
    return ("conv2d", dict(filters=filters, kernel_size=kernel, padding=padding, activation=activation, strides=strides))


def maxpool(size: int = 2):
    return ("maxpool2d", dict(pool_size=size))


def dropout(rate: float):
    return ("dropout", dict(rate=rate))


def flatten():
    return ("flatten", {})


def dense(units: int, activation: str | None = None):
    return ("dense", dict(units=units, activation=activation))


def act(name: str):
    return ("activation", dict(activation=name))


def vgg16_features(frozen_blocks: int = 4):
    """VGG16's 13-conv feature extractor (Keras ``include_top=False``); the first ``frozen_blocks`` blocks frozen."""
    return ("vgg16_features", dict(frozen_blocks=frozen_blocks))


# --- recipes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a document trained its model, in Keras terms (``model.compile`` + ``model.fit`` arguments)."""

    optimizer: str  # adam | sgd | rmsprop | adadelta
    optimizer_args: dict = field(default_factory=dict)  # Keras names: learning_rate, momentum, rho, epsilon
    loss: str = "sparse_categorical_crossentropy"  # or categorical_crossentropy (one-hot labels)
    epochs: int = 5
    batch_size: int = 32
    validation_split: float = 0.0
    early_stopping_patience: int | None = None  # EarlyStopping(monitor='val_loss', patience=...)
    train_subset: int | None = None  # train on the first N training images only
    validation_test_head: int | None = None  # validation_data = the first N test images
    note: str = ""


# Keras 3 optimizer defaults, made explicit so that both sides use the same numbers.
KERAS_OPTIMIZER_DEFAULTS = {
    "adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "sgd": dict(learning_rate=0.01, momentum=0.0),
    "rmsprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7),
    "adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
}


def optimizer_settings(recipe: Recipe) -> dict:
    """Every optimizer hyper-parameter of a recipe, Keras defaults filled in."""
    return {**KERAS_OPTIMIZER_DEFAULTS[recipe.optimizer], **recipe.optimizer_args}


# --- models -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    id: str
    source: str  # which seed document
    dataset: str  # mnist | cifar10
    input_shape: tuple  # (H, W, C), as Keras sees it
    layers: tuple
    params: int
    trainable_params: int
    recipe: Recipe
    preprocessing: str = "scale_255"  # scale_255 (x/255) | raw (0-255 floats) | vgg16_caffe
    documented: dict = field(default_factory=dict)  # documented results, in percent / raw loss

    @property
    def num_classes(self) -> int:
        return self.layers[-1][1]["units"] if self.layers[-1][0] == "dense" else self.layers[-2][1]["units"]


MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)

_SPECS = [
    ModelSpec(
        "mnist_cnn_tf_tutorial", "000", "mnist", MNIST,
        (conv(32, activation="relu"), maxpool(), conv(64, activation="relu"), maxpool(), conv(64, activation="relu"),
         flatten(), dense(64, "relu"), dense(10, "softmax")),
        93_322, 93_322,
        Recipe("adam", epochs=5, batch_size=32),
        documented=dict(test_acc=99.28, test_loss=0.0396, train_acc=99.81, reference_test_acc=99.06,
                        note="99.28% followed about 10 epochs; five fresh Keras 3 epochs gave 99.06%"),
    ),
    ModelSpec(
        "mnist_mlp_128_64", "001", "mnist", MNIST,
        (flatten(), dense(128, "relu"), dense(64, "relu"), dense(10, "softmax")),
        109_386, 109_386,
        Recipe("adam", loss="categorical_crossentropy", epochs=5, batch_size=128, validation_split=0.2),
    ),
    ModelSpec(
        "mnist_cnn_small", "001", "mnist", MNIST,
        (conv(16, activation="relu"), maxpool(), conv(32, activation="relu"), maxpool(), flatten(),
         dense(32, "relu"), dense(10, "softmax")),
        30_762, 30_762,
        Recipe("adam", epochs=5, batch_size=32),
        documented=dict(test_acc=98.62, test_loss=0.0423, train_acc=99.35),
    ),
    ModelSpec(
        "mnist_cnn_qiita", "002", "mnist", MNIST,
        (conv(64, activation="relu"), maxpool(), conv(32, activation="relu"), maxpool(), flatten(),
         dense(128, "relu"), dense(10, "softmax")),
        122_922, 122_922,
        Recipe("adam", loss="categorical_crossentropy", epochs=5, batch_size=32),
        documented=dict(train_acc=99.0, note="train acc about 95% after epoch 1, about 99% after epoch 5"),
    ),
    ModelSpec(
        "mnist_cnn_dropout", "004", "mnist", MNIST,
        (conv(10), act("relu"), maxpool(), dropout(0.2), flatten(), dense(128), act("relu"), dropout(0.2),
         dense(10), act("softmax")),
        217_838, 217_838,
        Recipe("adadelta", dict(learning_rate=1.0), loss="categorical_crossentropy", epochs=50, batch_size=128,
               validation_split=0.2, early_stopping_patience=2,
               note="Keras 2's Adadelta default learning rate 1.0, which the document relied on (Keras 3's is 0.001)"),
        documented=dict(val_acc=98.4, val_loss=0.0537, stopped_epoch=30),
    ),
    ModelSpec(
        "cifar10_cnn", "003", "cifar10", CIFAR,
        (conv(32, padding="same"), act("relu"), conv(32), act("relu"), maxpool(), dropout(0.25),
         conv(64, padding="same"), act("relu"), conv(64), act("relu"), maxpool(), dropout(0.25),
         flatten(), dense(512), act("relu"), dropout(0.5), dense(10), act("softmax")),
        1_250_858, 1_250_858,
        Recipe("rmsprop", dict(learning_rate=1e-4), loss="categorical_crossentropy", epochs=10, batch_size=100,
               train_subset=300, validation_test_head=100),
        preprocessing="raw",
        documented=dict(test_acc=20.0, note="300 training images: the document's point is that this is too few"),
    ),
    ModelSpec(
        "cifar10_vgg16_transfer", "003", "cifar10", CIFAR,
        (vgg16_features(frozen_blocks=4), flatten(), dense(256, "sigmoid"), dropout(0.5), dense(10, "softmax")),
        14_848_586, 7_213_322,
        Recipe("sgd", dict(learning_rate=1e-4, momentum=0.9), loss="categorical_crossentropy", epochs=3,
               batch_size=32),
        preprocessing="vgg16_caffe",
        documented=dict(test_acc=70.58, test_loss=0.856),
    ),
]

# Table 9 of document 000: (h1, activation, h2, optimizer, dropout, epochs, documented train acc, test acc).
TABLE9 = [
    (64, "sigmoid", None, "sgd", None, 5, 89.08, 89.81),
    (64, "relu", None, "sgd", None, 5, 93.25, 93.55),
    (128, "relu", None, "sgd", None, 5, 93.58, 93.79),
    (128, "relu", None, "adam", None, 5, 98.03, 97.44),
    (128, "relu", 64, "adam", None, 5, 98.68, 97.90),
    (128, "relu", None, "adam", None, 10, 99.51, 97.97),
    (128, "relu", None, "adam", 0.2, 10, 97.64, 97.87),
    (128, "relu", None, "adam", 0.4, 10, 96.54, 97.46),
]


def _table9_spec(row: int, h1, activation, h2, optimizer, rate, epochs, train_acc, test_acc) -> ModelSpec:
    layers = [flatten(), dense(h1, activation)]
    if rate:
        layers.append(dropout(rate))
    if h2:
        layers.append(dense(h2, "relu"))
    layers.append(dense(10, "softmax"))
    params = 785 * h1 + (h1 + 1) * (h2 or 10) + ((h2 + 1) * 10 if h2 else 0)
    return ModelSpec(
        f"mnist_mlp_t9_{row}", "000", "mnist", MNIST, tuple(layers), params, params,
        Recipe(optimizer, epochs=epochs, batch_size=32,
               note="loss: sparse CE (the chapter that defined these models is not among the documents)"),
        documented=dict(train_acc=train_acc, test_acc=test_acc),
    )


_SPECS += [_table9_spec(i, *row) for i, row in enumerate(TABLE9, start=1)]
SPECS: dict[str, ModelSpec] = {spec.id: spec for spec in _SPECS}
DEFAULT_MODEL = "mnist_cnn_small"


class UnknownModelError(KeyError, UserError):
    def __str__(self) -> str:
        return self.args[0]


def list_models() -> list[str]:
    """Every documented model id, in SPEC.md order."""
    return list(SPECS)


def get_spec(model_id: str) -> ModelSpec:
    try:
        return SPECS[model_id]
    except KeyError:
        raise UnknownModelError(
            f"unknown model id {model_id!r}; valid ids: {', '.join(SPECS)}"
        ) from None


def with_train_images(spec: ModelSpec, train_images: str | int | None) -> ModelSpec:
    """The spec with its recipe's training subset replaced: ``None`` keeps the recipe's, ``"all"`` drops the subset
    (document 003's CNN on all 50,000 CIFAR-10 images), a number N trains on the first N images."""
    if train_images is None:
        return spec
    if str(train_images) == "all":
        subset = None
    elif str(train_images).isdigit() and int(train_images) > 0:
        subset = int(train_images)
    else:
        raise ValueError(f"--train-images {train_images!r}: use a positive number of images or 'all'")
    return replace(spec, recipe=replace(spec.recipe, train_subset=subset))
