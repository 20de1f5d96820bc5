"""Side-effect-free pieces both wings import (the data pipeline and the trainer): errors, atomic files.

Importing it loads nothing heavy (no torch, no pyarrow), so `import training.pretrain` does
not pull in the data pipeline's Arrow set-up, and the data pipeline does not pull in torch."""
