"""Masks into recurrent layers: Embedding(mask_zero=True) and Masking feeding LSTM / GRU / SimpleRNN (return_sequences,
return_state, go_backwards, zero_output_for_mask) and Bidirectional, through layers that hand the mask on (Dropout,
Dense, TimeDistributed(Dense), a merge); Keras vs its twin in both weight directions (check_both_ways), Keras vs
model.py in a process without TensorFlow, Keras, or lightning_cnn, and the one-line refusal of a mask reaching a layer
that would use it in a way not implemented here; graph.json's module references checked when read.

Inputs: real MNIST pixel rows (7 rows x 5 columns from the middle of 5 test digits, where they have ink), as token
ids 1..49 (a row's mean pixel) for the Embeddings, with padding
written in: row 0 padded at the end, row 1 at the start, row 2 in the middle, row 3 entirely, row 4 not at all
(ids 0; for Masking, every feature of the step set to the mask value). Tolerance: keras_ref.tolerance's rule (see
test_convert_layers): a masking mistake (a state not kept, an output not carried or not zeroed, a flipped mask)
moves outputs by O(their size), the float32 rounding of the step-by-step recurrence by ~1e-7.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import torch
from keras import layers

import lightning_cnn
from keras_ref.convert import convert, save_converted
from keras_ref.parity import ParityError
from keras_ref.tolerance import max_abs, within
from lightning_cnn.converted.graph import ConvertedModelError, check_graph

from .conftest import real_batch
from .test_convert_layers import check_both_ways, randomize
from .test_model_source import ALLOWED_IMPORTS, EXPORT_RTOL, run_child

pytestmark = pytest.mark.keras

STEPS, VOCAB = 7, 50
PADDED = {0: slice(4, None), 1: slice(0, 2), 2: slice(2, 4), 3: slice(None)}  # row -> its padded steps


def pixels():
    """(5, 7, 5): rows 8-14, columns 14-18 of the first 5 MNIST test digits (ink in every one), in [0, 1]."""
    x, _ = real_batch("mnist_cnn_small", 5)
    return np.ascontiguousarray(x[:, 8:8 + STEPS, 14:19, 0], dtype=np.float32)


def tokens():
    """(5, 7) int32 ids 1..49 (a pixel row's mean), 0 where PADDED says."""
    ids = 1 + np.round(pixels().mean(-1) * (VOCAB - 2)).astype("int32")
    for row, steps in PADDED.items():
        ids[row, steps] = 0
    return ids


def padded_rows(value=0.0):
    """(5, 7, 5) real MNIST pixel rows (+0.1: no real step is all zeros), PADDED steps set to ``value``."""
    x = pixels() + 0.1
    for row, steps in PADDED.items():
        x[row, steps] = value
    return np.ascontiguousarray(x, dtype=np.float32)


def on_tokens(*stack, multi=False):
    """ids -> Embedding(mask_zero=True) -> the layers in turn; ``multi``: the last one's results are all outputs."""
    ids = keras.Input((STEPS,), dtype="int32")
    x = layers.Embedding(VOCAB, 6, mask_zero=True)(ids)
    for layer in stack:
        x = layer(x)
    return keras.Model(ids, list(x) if multi else x)


def on_rows(value, *stack):
    inputs = keras.Input((STEPS, 5))
    x = layers.Masking(mask_value=value)(inputs)
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x)


def merged_branches():
    """Two masked recurrent branches added (Keras ORs their masks) into a masked LSTM."""
    ids = keras.Input((STEPS,), dtype="int32")
    x = layers.Embedding(VOCAB, 6, mask_zero=True)(ids)
    a = layers.LSTM(4, return_sequences=True)(x)
    b = layers.GRU(4, return_sequences=True, go_backwards=True)(x)
    return keras.Model(ids, layers.LSTM(3)(layers.Add()([a, b])))


CASES = {
    "lstm_sequences_state": (lambda: on_tokens(layers.LSTM(4, return_sequences=True, return_state=True), multi=True),
                             tokens),
    "lstm_last_output": (lambda: on_tokens(layers.Dropout(0.3), layers.LSTM(4)), tokens),
    "lstm_backwards": (lambda: on_tokens(layers.LSTM(4, return_sequences=True, go_backwards=True),
                                         layers.LSTM(3, go_backwards=True, return_state=True), multi=True), tokens),
    "lstm_zero_output_for_mask": (lambda: on_tokens(layers.LSTM(4, return_sequences=True, zero_output_for_mask=True),
                                                    layers.LSTM(3, zero_output_for_mask=True)), tokens),
    "gru_sequences_state": (lambda: on_tokens(layers.GRU(4, return_sequences=True),
                                              layers.GRU(3, return_state=True), multi=True), tokens),
    "gru_backwards": (lambda: on_tokens(layers.GRU(4, go_backwards=True)), tokens),
    "simple_rnn": (lambda: on_tokens(layers.SimpleRNN(4, return_sequences=True, activation="relu"),
                                     layers.SimpleRNN(3, go_backwards=True, return_state=True), multi=True), tokens),
    "bidirectional_lstm": (lambda: on_tokens(layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
                                             layers.Bidirectional(layers.LSTM(3))), tokens),
    "bidirectional_gru_sum_none": (lambda: on_tokens(
        layers.Bidirectional(layers.GRU(4, return_sequences=True), merge_mode="sum"),
        layers.Bidirectional(layers.SimpleRNN(3, return_sequences=True), merge_mode=None), multi=True), tokens),
    "merged_branches": (merged_branches, tokens),
    "masking_lstm": (lambda: on_rows(0.0, layers.Dense(6), layers.TimeDistributed(layers.Dense(4)),
                                     layers.LSTM(4, return_sequences=True), layers.LSTM(3)), padded_rows),
    "masking_value_bidirectional": (lambda: on_rows(-1.0, layers.Bidirectional(layers.GRU(3, return_sequences=True),
                                                                               merge_mode="ave")),
                                    lambda: padded_rows(-1.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_recurrence_matches_keras_both_ways(case):
    keras.utils.set_random_seed(0)
    build, inputs = CASES[case]
    check_both_ways(build(), inputs())


def test_keras_semantics_the_rules_reproduce():
    """What recurrent.py's docstring says Keras does, on Keras itself (a Keras upgrade that changes it fails here)."""
    keras.utils.set_random_seed(0)
    ids = tokens()
    sequences, h, c = [np.asarray(t) for t in randomize(on_tokens(
        layers.LSTM(4, return_sequences=True, return_state=True), multi=True))(ids)]
    assert np.all(sequences[3] == 0) and np.all(h[3] == 0) and np.all(c[3] == 0)  # all masked: zeros
    assert np.all(sequences[1, :2] == 0)  # before the first kept step: zeros
    np.testing.assert_array_equal(sequences[0, 4:], np.broadcast_to(sequences[0, 3], (3, 4)))  # output carried
    np.testing.assert_array_equal(sequences[2, 2:4], np.broadcast_to(sequences[2, 1], (2, 4)))
    np.testing.assert_array_equal(h, sequences[:, -1])
    both = np.asarray(randomize(on_tokens(layers.Bidirectional(layers.LSTM(4, return_sequences=True))))(ids))
    assert np.all(both[0, 4:] == 0) and np.all(both[2, 2:4] == 0) and np.all(both[4] != 0)  # zeros in both halves
    masked = np.asarray(on_rows(-1.0)(padded_rows(-1.0)))
    np.testing.assert_array_equal(masked, np.where(padded_rows(-1.0) == -1.0, 0.0, padded_rows(-1.0)))


def model_py_case():
    """ids -> Embedding(mask_zero) -> Bidirectional LSTM (sequences) -> GRU backwards -> Dense."""
    ids = keras.Input((STEPS,), dtype="int32", name="tokens")
    x = layers.Embedding(VOCAB, 6, mask_zero=True, name="embed")(ids)
    x = layers.Bidirectional(layers.LSTM(4, return_sequences=True), name="both")(x)
    x = layers.GRU(3, go_backwards=True, name="gru")(x)
    return keras.Model(ids, layers.Dense(2, name="logits")(x), name="masked_sequence")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(Keras model, its converted folder) for model_py_case, random weights."""
    keras.utils.set_random_seed(0)
    model = randomize(model_py_case())
    return model, save_converted(model, tmp_path_factory.mktemp("masked") / "converted", tokens())


def test_model_py_runs_masked_recurrence_without_tensorflow_and_matches_keras(saved):
    model, folder = saved
    ids = tokens()
    source = (folder / "model.py").read_text()
    assert "def masked_rnn(" in source and "masked_rnn(self.both, " in source
    assert {line.strip() for line in source.splitlines() if line.strip().startswith(("import ", "from "))} \
        <= ALLOWED_IMPORTS
    report, outputs = run_child(folder, ids, "train,exact")
    assert report["blocked_modules_imported"] == [] and report["without_gradient"] == []
    expected = np.asarray(model(ids, training=False))
    got, exact = outputs["eager_0"], outputs["exact_0"]
    assert within(dict(max_abs_diff=max_abs(got, expected), max_abs_output=float(np.abs(expected).max()),
                       twin_float32_error=max_abs(got, exact)))


@pytest.mark.slow  # torch.export traces the step loop (7 steps, 2 directions): ~15 s more on 2 loaded cores
def test_torch_export_of_masked_model_py_matches(saved):
    _, folder = saved
    _, outputs = run_child(folder, tokens(), "export")
    got = outputs["eager_0"]
    assert np.abs(outputs["export_0"] - got).max() <= EXPORT_RTOL * np.abs(got).max()


def test_loaded_masked_twin_matches_model_and_inference_copy(saved):
    model, folder = saved
    ids = torch.from_numpy(tokens())
    twin = lightning_cnn.load_converted(folder)
    with torch.no_grad():
        got = twin(ids)
        np.testing.assert_array_equal(lightning_cnn.load_converted(folder, for_inference=True)(ids), got)
    expected = np.asarray(model(tokens(), training=False))
    assert np.abs(got.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()  # as test_load_converted


def _masked_step(graph: dict) -> dict:
    return next(step for node in graph["nodes"] for step in node["steps"] if step.get("function") == "masked_rnn")


@pytest.mark.parametrize("tamper, message", [
    (lambda g: _masked_step(g)["args"].__setitem__(0, {"$module": "nowhere"}), "passes unknown module 'nowhere'"),
    (lambda g: _masked_step(g).update(function="torch.cat"), "a module is passed only to a helper function"),
    (lambda g: _masked_step(g)["kwargs"].update(zero_output={"$module": "both"}), "only allowed in a step's args"),
    (lambda g: g["modules"][0].update(name="masked_rnn"), "'masked_rnn' is not a usable name"),
])
def test_tampered_module_reference_is_one_line(saved, tmp_path, tamper, message):
    graph = json.loads((saved[1] / "graph.json").read_text())
    tamper(graph)
    with pytest.raises(ConvertedModelError, match=message) as error:
        check_graph(graph)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("build, where", [
    (lambda: on_tokens(layers.GlobalAveragePooling1D(name="pool")), "'pool' (GlobalAveragePooling1D)"),
    (lambda: on_rows(0.0, layers.Dense(4), layers.BatchNormalization(name="norm")), "'norm' (BatchNormalization)"),
])
def test_mask_reaching_another_consumer_is_refused_in_one_line(build, where):
    with pytest.raises(ParityError) as error:
        convert(build())
    assert str(error.value) == (
        f"layer {where}: receives a mask (mask=: from Masking or Embedding(mask_zero=True)) that the converter does "
        "not implement for this layer (only LSTM, GRU, SimpleRNN and Bidirectional take masks); remove the mask "
        "before it or convert without masking")


def test_unmasked_recurrence_still_calls_the_module():
    """The masked path is only for masked calls: without a mask the stock module runs the whole sequence."""
    ids = keras.Input((STEPS,), dtype="int32")
    twin = convert(keras.Model(ids, layers.LSTM(3, name="lstm")(layers.Embedding(VOCAB, 6)(ids))))
    assert "masked_rnn" not in twin.code and "self.lstm(" in twin.code


def test_a_masked_output_converts_but_twin_training_is_refused(tmp_path):
    """Masking on flat feature rows, then Dense: the output carries a per-sample mask, by which Keras's fit weights the
    loss (a sample whose features all equal the mask value counts 0). Inference is Keras's (the Dense sees the same
    zeroed rows); training the twin would count those samples, so the folder records the masked output and every
    twin-training path refuses it in one line, as keras_ref.parity's training steps do."""
    from keras_ref.step_parity import train_step_parity
    from lightning_cnn.user_data import UserDataError
    from lightning_cnn.user_data.model_inputs import MASKED_OUTPUT, ModelInputs

    rows = keras.Input((5,), name="row")
    model = keras.Model(rows, layers.Dense(3, activation="softmax", name="scores")(layers.Masking(name="mask")(rows)))
    x = real_batch("mnist_cnn_small", 5)[0].reshape(5, -1)[:, 400:405].copy()  # pixels from the middle: ink
    x[2] = 0.0  # a masked sample
    folder = save_converted(model, tmp_path / "masked", inputs=x)
    assert json.loads((folder / "graph.json").read_text())["masked_outputs"] == ["scores"]
    assert json.loads((folder / "parity.json").read_text())["passed"]
    twin = lightning_cnn.load_converted(folder)
    assert twin.masked_outputs == ["scores"]
    with pytest.raises(UserDataError, match="carries a Keras mask") as error:
        ModelInputs.of_twin(twin)
    assert str(error.value) == MASKED_OUTPUT and "\n" not in MASKED_OUTPUT
    with pytest.raises(ParityError, match="carries a Keras mask"):
        train_step_parity(model, x, np.array([0, 1, 2, 0, 1]), 1, None)
    unmasked = keras.Model(rows, layers.Dense(3, name="scores")(rows))
    assert lightning_cnn.load_converted(save_converted(unmasked, tmp_path / "plain", inputs=x)).masked_outputs == []
