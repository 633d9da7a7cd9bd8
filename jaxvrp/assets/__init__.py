"""Model files shipped with jaxvrp (package data).

`sam_tiny_128/`: the embedded default SAM, a 733k-parameter "tiny_128" SAM trained on
generated procedural images by `python -m jaxvrp.sam.train --config configs/sam.py`; its
metadata.json records the training config and its held-out quality (docs/sam_training.md).
"""

from pathlib import Path

DEFAULT_SAM = Path(__file__).parent / "sam_tiny_128"


def default_sam_dir() -> Path:
    """The embedded SAM's checkpoint directory (`jaxvrp.sam.load` reads it)."""
    if not (DEFAULT_SAM / "metadata.json").is_file():
        raise FileNotFoundError(f"the embedded SAM is missing from {DEFAULT_SAM}")
    return DEFAULT_SAM
