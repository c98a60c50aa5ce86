"""MultiHeadAttention -> nn.MultiheadAttention: self-attention, cross-attention (other lengths and feature sizes,
a separate key), without biases, inside a transformer encoder block; Keras vs its twin, both weight directions,
on real MNIST pixel rows. The tolerance is keras_ref.tolerance's rule (see test_convert_layers)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from keras_ref.convert import convert
from keras_ref.parity import ParityError

from .test_convert_layers import check_both_ways, rows

pytestmark = pytest.mark.keras


def self_attention(**kwargs):
    inputs = keras.Input((7, 6))
    return keras.Model(inputs, layers.MultiHeadAttention(num_heads=2, key_dim=3, **kwargs)(inputs, inputs))


def cross_attention(with_key=False):
    query, value = keras.Input((7, 6)), keras.Input((5, 4))
    key = keras.Input((5, 3)) if with_key else None
    mha = layers.MultiHeadAttention(num_heads=3, key_dim=2)
    out = mha(query, value, key=key) if with_key else mha(query, value)
    return keras.Model([query, value] + ([key] if with_key else []), out)


def encoder_block():
    """A transformer encoder block: attention + residual + LayerNorm, then a feed-forward with residual."""
    inputs = keras.Input((7, 6))
    x = layers.MultiHeadAttention(num_heads=2, key_dim=3, dropout=0.1)(inputs, inputs)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([inputs, x]))
    y = layers.Dense(12, activation="gelu")(x)
    y = layers.Dense(6)(layers.Dropout(0.1)(y))
    x = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, y]))
    return keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling1D()(x)))


def sequences(*shapes):
    """Real MNIST pixel rows cut to each (steps, features)."""
    return [np.ascontiguousarray(rows(steps, features)) for steps, features in shapes]


CASES = {
    "self_attention": (self_attention, lambda: sequences((7, 6))),
    "self_attention_no_bias": (lambda: self_attention(use_bias=False), lambda: sequences((7, 6))),
    "cross_attention": (cross_attention, lambda: sequences((7, 6), (5, 4))),
    "cross_attention_key": (lambda: cross_attention(True), lambda: sequences((7, 6), (5, 4), (5, 3))),
    "encoder_block": (encoder_block, lambda: sequences((7, 6))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_matches_keras_both_ways(case):
    keras.utils.set_random_seed(0)
    build, inputs = CASES[case]
    check_both_ways(build(), inputs())


@pytest.mark.parametrize("build, words", [
    (lambda: self_attention(output_shape=(4,)), ["num_heads * key_dim", "output_shape"]),
    (lambda: keras.Model(i := keras.Input((7, 6)), layers.MultiHeadAttention(2, 3)(i, i, use_causal_mask=True)),
     ["use_causal_mask"]),
])
def test_unsupported_attention_is_one_line(build, words):
    with pytest.raises(ParityError) as error:
        convert(build())
    message = str(error.value)
    assert message.startswith("layer '") and "(MultiHeadAttention)" in message and "\n" not in message
    assert all(word in message for word in words), message
