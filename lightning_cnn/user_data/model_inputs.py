"""What a model takes and gives, in the terms the data layer needs: one place for both kinds of model.

A converted twin says it in its graph (``input_specs``: Keras names, shapes and dtypes) and in its modules (an
Embedding reading an input means integer ids; a Rescaling/Normalization reading it means the model scales its own
pixels); a documented model in its spec. The output width is what the labels must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import UserDataError

# What --rescale may say; "auto": x/255 for 8-bit pixels unless the model scales its own input (see resolve()).
RESCALE_CHOICES = ("auto", "1/255", "none")
KERAS_DEFAULT_IMAGE_SIZE = (256, 256)  # image_dataset_from_directory's image_size, for a model of any size
FREE_EXTENT = 32  # the size a free (None) dimension gets in the one forward pass that measures the output width
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the PIL mode images are converted to (Keras color_mode)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its Keras name, Keras shape without the batch axis (None: any extent), and whether it
    takes integer ids (an integer dtype, or read only by Embeddings) rather than values."""

    name: str
    shape: tuple
    integer_ids: bool = False
    scales_itself: bool = False  # read by a Rescaling/Normalization layer: it wants raw pixel values

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


@dataclass(frozen=True)
class ModelInputs:
    """The inputs and output width of a model, and the preprocessing a documented model's recipe uses."""

    inputs: tuple[InputSpec, ...]
    output_width: int
    recipe_preprocessing: str | None = None  # a documented model's ("scale_255", "raw", "vgg16_caffe")

    @classmethod
    def of_spec(cls, spec) -> ModelInputs:
        return cls((InputSpec("image", tuple(spec.input_shape)),), spec.num_classes, spec.preprocessing)

    @classmethod
    def of_twin(cls, twin: nn.Module) -> ModelInputs:
        readers = getattr(twin, "input_readers", {})  # set by lightning_cnn.converted.build_twin
        inputs = []
        for spec in twin.input_specs:
            classes = readers.get(spec["name"], [])
            ids = "int" in str(spec.get("dtype", "")) or (bool(classes) and all(c == "Embedding" for c in classes))
            scales = any(c in ("Rescaling", "Normalization") for c in classes)
            inputs.append(InputSpec(spec["name"], tuple(spec["shape"][1:]), ids, scales))
        return cls(tuple(inputs), _output_width(twin, inputs))

    def preprocessing(self, rescale: str, spec: InputSpec) -> str:
        """How 8-bit pixels become the floats this input sees: "scale_255" (x/255), "raw" (0..255) or the
        documented recipe's. ``auto``: a documented model's recipe; x/255 for a twin, unless the twin's own
        Rescaling/Normalization reads the input (then raw pixels, as Keras's image_dataset_from_directory gives)."""
        if rescale not in RESCALE_CHOICES:
            raise UserDataError(f"--rescale {rescale!r}: use one of {', '.join(RESCALE_CHOICES)}")
        if rescale == "1/255":
            return "scale_255"
        if rescale == "none":
            return "raw"
        if self.recipe_preprocessing is not None:
            return self.recipe_preprocessing
        return "raw" if spec.scales_itself else "scale_255"

    def image_input(self, where: str) -> InputSpec:
        """The model's one image input: a folder of images feeds a single (H, W, C) input."""
        if len(self.inputs) != 1 or not self.inputs[0].is_image or self.inputs[0].integer_ids:
            shapes = ", ".join(f"{spec.name} {spec.shape}" for spec in self.inputs)
            raise UserDataError(f"{where} is a folder of images, but the model's inputs are {shapes}; a folder "
                                "feeds one (height, width, channels) input: give an .npz of arrays instead")
        channels = self.inputs[0].shape[2]
        if channels not in IMAGE_MODES:
            raise UserDataError(f"{where}: the model's images have {channels} channels; a folder of images "
                                f"gives 1 (grayscale), 3 (RGB) or 4 (RGBA): give an .npz of arrays instead")
        return self.inputs[0]

    @staticmethod
    def image_size(spec: InputSpec, override: tuple | None) -> tuple[int, int]:
        """(H, W) images are resized to: the model's; --image-size must agree with a fixed size and sets a free
        one (default: Keras's 256x256)."""
        height, width = spec.shape[:2]
        if override is not None:
            override = tuple(override)
            if (height, width) != (None, None) and override != (height, width):
                raise UserDataError(f"--image-size {override[0]}x{override[1]}: the model takes {height}x{width} "
                                    "images; leave --image-size out (images are resized to the model's size)")
            return override
        if height is None or width is None:
            return KERAS_DEFAULT_IMAGE_SIZE
        return height, width

    def check_classes(self, num_classes: int, where: str) -> None:
        if num_classes != self.output_width:
            raise UserDataError(f"{where} has {num_classes} classes but the model has {self.output_width} outputs; "
                                "use data with one class per output, or a model with one output per class")


def _output_width(twin: nn.Module, inputs: list[InputSpec]) -> int:
    """The last extent of the twin's output on one all-zero sample (a batch of 2, so BatchNorm in any mode works)."""
    samples = []
    for spec in inputs:
        shape = [FREE_EXTENT if n is None else n for n in spec.shape]
        if spec.is_image:  # Keras (H, W, C) -> the twin's (C, H, W)
            shape = [shape[2], shape[0], shape[1]]
        samples.append(torch.zeros((2, *shape), dtype=torch.long if spec.integer_ids else torch.float32))
    was_training = twin.training
    try:
        with torch.no_grad():
            output = twin.eval()(*samples)
    except Exception as error:  # a model that cannot run on its own declared input shape
        raise UserDataError(f"the model does not run on inputs of its declared shapes "
                            f"({', '.join(str(s.shape) for s in inputs)}): {error}") from None
    finally:
        twin.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise UserDataError("the model's output is not one vector of class scores per sample; training the twin "
                            "supports a single (batch, classes) output")
    if getattr(twin, "masked_outputs", None):
        raise UserDataError(MASKED_OUTPUT)
    return int(output.shape[1])


MASKED_OUTPUT = ("the model's output carries a Keras mask (a Masking layer or Embedding(mask_zero=True) reaches it "
                 "through pass-through layers): Keras's fit weights the loss of masked samples by 0, which training "
                 "the twin does not reproduce; end the mask before the output (mask it into a recurrent layer, or "
                 "drop the Masking layer) and convert again")
