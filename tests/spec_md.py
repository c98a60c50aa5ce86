"""Numbers as SPEC.md states them, written once as literals for every test suite to assert against."""

# SPEC.md, "Models" and Table 9: (total, trainable) parameters.
SPEC_PARAMS = {
    "mnist_cnn_tf_tutorial": (93_322, 93_322),
    "mnist_mlp_128_64": (109_386, 109_386),
    "mnist_cnn_small": (30_762, 30_762),
    "mnist_cnn_qiita": (122_922, 122_922),
    "mnist_cnn_dropout": (217_838, 217_838),
    "cifar10_cnn": (1_250_858, 1_250_858),
    "cifar10_vgg16_transfer": (14_848_586, 7_213_322),
    "mnist_mlp_t9_1": (50_890, 50_890),
    "mnist_mlp_t9_2": (50_890, 50_890),
    "mnist_mlp_t9_3": (101_770, 101_770),
    "mnist_mlp_t9_4": (101_770, 101_770),
    "mnist_mlp_t9_5": (109_386, 109_386),
    "mnist_mlp_t9_6": (101_770, 101_770),
    "mnist_mlp_t9_7": (101_770, 101_770),
    "mnist_mlp_t9_8": (101_770, 101_770),
}
