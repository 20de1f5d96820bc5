"""The trainer. Importing the package first silences third-party start-up noise (training/quiet.py)."""
from training.quiet import silence_third_party_noise

silence_third_party_noise()
