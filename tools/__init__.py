"""The model tools. Importing `training` first silences third-party start-up noise (training/quiet.py)."""
import training  # noqa: F401
