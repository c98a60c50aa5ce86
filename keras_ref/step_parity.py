"""Training-step parity on a user's own model: its compile config's optimizer and loss, N steps in Keras and in
the PyTorch twin from the same weights on the same batch, then the weights compared.

Both sides run in inference mode (Keras ``model(x, training=False)`` in a GradientTape, the twin in ``eval()``):
dropout off and BatchNormalization on its moving statistics, so the two compute the same function and what is
compared is the gradient and the optimizer arithmetic (as parity_tests/test_training.py does for the tutorials).
The torch side is exactly what ``scripts/train.py --keras-model`` trains with
(``lightning_cnn.recipes.keras_compile.KerasCompile``); the Keras side deserializes the same compile config with Keras
(built-in optimizer and loss classes only, nothing custom).
"""

from __future__ import annotations

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from lightning_cnn.recipes.keras_compile import FinalActivationInput, KerasCompile  # noqa: E402
from lightning_cnn.user_data.model_inputs import MASKED_OUTPUT  # noqa: E402

from .convert import convert  # noqa: E402
from .parity import ParityError  # noqa: E402

# float32 weights after a few steps: the gradients agree to ~1e-8 absolute (float32 summation order) and Adam /
# RMSprop divide by a running gradient magnitude, amplifying a difference near g = 0 by up to lr / eps_hat (~300
# at Adam's first step): parity_tests/test_training.py measured <= 1e-5 after 3 Adam steps on the MNIST CNNs and
# ~1e-7 for SGD. A wrong formula (torch's stock Adam/RMSprop) is off by >= 1e-3. Deeper models accumulate more
# rounding per gradient: raise --train-atol for them, a formula error stays orders of magnitude above.
TRAIN_ATOL = 1e-4


def _keras_labels(compile_config: KerasCompile, y: np.ndarray, num_classes: int) -> np.ndarray:
    if compile_config.loss == "sparse_categorical_crossentropy":
        return y
    return np.eye(num_classes, dtype=np.float32)[y]


def _keras_objects(config: dict | None, compile_config: KerasCompile):
    optimizer = keras.optimizers.get((config or {}).get("optimizer") or "adam")
    loss = (config or {}).get("loss") or compile_config.loss
    return optimizer, keras.losses.get(loss)


def train_step_parity(keras_model, x_nhwc: np.ndarray, y: np.ndarray, steps: int, config: dict | None) -> dict:
    """Train ``steps`` steps on (x, y) on both sides; returns the largest |Δ| of any weight and where it is."""
    compile_config = KerasCompile.from_config(config)  # refuses what the twin cannot train, before any work
    if any(getattr(t, "_keras_mask", None) is not None for t in keras_model.outputs):
        raise ParityError(MASKED_OUTPUT)
    twin = convert(keras_model)
    twin.eval()
    params = [p for p in twin.parameters() if p.requires_grad]
    if not params:
        raise ParityError("the model has no trainable weights: nothing to compare after training steps")
    optimizer = compile_config.make_optimizer(params)
    final = FinalActivationInput(twin, compile_config.logits_activations)
    x = np.asarray(x_nhwc, dtype=np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    for _ in range(steps):
        optimizer.zero_grad()
        output = twin(xt)
        compile_config.loss_value(output, yt, final.logits_for(output)).backward()
        optimizer.step()

    keras_optimizer, keras_loss = _keras_objects(config, compile_config)
    num_classes = int(keras_model.outputs[0].shape[-1])
    labels = _keras_labels(compile_config, np.asarray(y), num_classes)
    variables = keras_model.trainable_variables
    for _ in range(steps):
        with tf.GradientTape() as tape:
            # mean: a loss given by name is a per-sample function; compile() reduces it over the batch
            loss = tf.reduce_mean(keras_loss(labels, keras_model(x, training=False)))
        keras_optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    trained_in_keras = convert(keras_model).state_dict()
    worst, where = 0.0, None
    for name, tensor in twin.state_dict().items():
        diff = float((tensor.float() - trained_in_keras[name].float()).abs().max()) if tensor.numel() else 0.0
        if diff > worst:
            worst, where = diff, name
    return {"steps": steps, "samples": int(len(x)), "loss": compile_config.loss,
            "optimizer": getattr(keras_optimizer, "name", type(keras_optimizer).__name__),
            "max_abs_weight_diff": worst, "worst_weight": where}
