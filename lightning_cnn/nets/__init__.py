"""The torch networks: the documented models built from ``lightning_cnn.specs``, the one layer library they and the
converted twins share, Keras-style summaries and the VGG16 ImageNet weights."""
