"""One training run: `train.py` is its table of contents; its phases and their parts beside it."""
