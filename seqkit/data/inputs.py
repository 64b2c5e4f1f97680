"""What a data module hands a seq2seq model, in one typed, one-way step."""

from __future__ import annotations

from dataclasses import dataclass

from seqkit.data.tokenizer import Tokenizers
from seqkit.models.patches import ImageSource


@dataclass(frozen=True)
class ModelInputs:
    """The data's side of the model–data handshake: a data module's `model_inputs()` returns
    it and `Seq2Seq.setup` reads it (the data module never reads the model)."""

    tokenizers: Tokenizers
    """The tokenizer pair the data is encoded with: it sets the vocabulary sizes."""
    image_source: ImageSource | None = None
    """How the source images are cut and standardized; None for a token source."""
    max_length: int = 0
    """The longest source or target in a batch, in tokens or patches; 0 if unbounded."""
