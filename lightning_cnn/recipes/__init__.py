"""How a network is trained: the LightningModules for the documented recipes and for a Keras file's compile
config, and optimizers that take Keras's steps."""
