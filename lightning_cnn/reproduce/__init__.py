"""Reproduce the documented results on both sides: ``jobs`` (what to train, run in parallel processes),
``worker`` (one run) and ``report`` (results.md and its figures). ``lightning-cnn-reproduce`` drives them."""
