"""Recurrent layers and sequence wrappers: LSTM / GRU / SimpleRNN (go_backwards, return_state, return_sequences),
Bidirectional (every merge_mode), TimeDistributed over other layers, RepeatVector; Keras vs its twin, both weight
directions (check_both_ways), on real MNIST pixel rows (and CIFAR-10 crops for TimeDistributed images). The
tolerance is keras_ref.tolerance's rule (see test_convert_layers)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from keras_ref.convert import convert
from keras_ref.parity import ParityError

from .test_convert_layers import check_both_ways, images, rows

pytestmark = pytest.mark.keras


def on_rows(*stack, multi=False):
    """(7, 5) rows -> the layers in turn; ``multi``: the last layer's several results are all outputs."""
    inputs = keras.Input((7, 5))
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, list(x) if multi else x)


def image_sequence():
    """(3 frames of 9x9x3 CIFAR-10 crops) -> TimeDistributed(Conv2D) -> TimeDistributed(GlobalAveragePooling2D)."""
    inputs = keras.Input((3, 9, 9, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, strides=2, padding="same"))(inputs)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D())(x)
    return keras.Model(inputs, layers.LSTM(3)(x))


def frames():
    return np.ascontiguousarray(images(9, 3, 6).reshape(2, 3, 9, 9, 3))


CASES = {
    "lstm_return_state": (lambda: on_rows(layers.LSTM(4, return_state=True), multi=True), rows),
    "lstm_sequences_state_backwards": (lambda: on_rows(layers.LSTM(4, return_sequences=True, return_state=True,
                                                                   go_backwards=True), multi=True), rows),
    "gru_backwards": (lambda: on_rows(layers.GRU(4, return_sequences=True, go_backwards=True), layers.GRU(3)),
                      rows),
    "gru_return_state": (lambda: on_rows(layers.GRU(4, return_state=True), multi=True), rows),
    "simple_rnn": (lambda: on_rows(layers.SimpleRNN(4, return_sequences=True),
                                   layers.SimpleRNN(3, activation="relu", go_backwards=True)), rows),
    "bidirectional_lstm_concat": (lambda: on_rows(layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                                                  layers.Bidirectional(layers.LSTM(3))), rows),
    "bidirectional_gru_sum_ave": (lambda: on_rows(layers.Bidirectional(layers.GRU(4, return_sequences=True),
                                                                       merge_mode="sum"),
                                                  layers.Bidirectional(layers.GRU(3), merge_mode="ave")), rows),
    "bidirectional_none": (lambda: on_rows(layers.Bidirectional(layers.SimpleRNN(3), merge_mode=None),
                                           multi=True), rows),
    "time_distributed_dense": (lambda: on_rows(layers.TimeDistributed(layers.Dense(6, activation="relu")),
                                               layers.TimeDistributed(layers.Dropout(0.2)), layers.LSTM(2)), rows),
    "time_distributed_conv2d": (image_sequence, frames),
    "repeat_vector_seq2seq": (lambda: on_rows(layers.LSTM(4), layers.RepeatVector(3),
                                              layers.LSTM(2, return_sequences=True)), rows),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_matches_keras_both_ways(case):
    keras.utils.set_random_seed(0)
    build, inputs = CASES[case]
    check_both_ways(build(), inputs())


def test_unsupported_rnn_option_is_refused_in_one_line():
    model = on_rows(layers.LSTM(4, return_sequences=True, activation="relu"))
    with pytest.raises(ParityError) as error:
        convert(model)
    message = str(error.value)
    assert message.startswith("layer '") and "(LSTM)" in message and "'activation': 'relu'" in message
    assert "\n" not in message
