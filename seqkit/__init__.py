"""seqkit: sequence models (RNN, GRU, LSTM, Transformer, ViT; seq2seq and language models) on
Lightning and Hugging Face data.

Names are imported when first used (PEP 562): `import seqkit` is cheap, and translating with
a `Translator` never loads Lightning, `datasets` or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from seqkit.cpu import set_mkl_mode

__version__ = "0.1.0"

set_mkl_mode()  # before anything multiplies matrices: MKL reads it at its first call

_WHERE = {
    "Classifier": "seqkit.lit.classifier",
    "DecodingConfig": "seqkit.decoding",
    "DigitStripData": "seqkit.data.strips",
    "ImageData": "seqkit.data.patches",
    "ImageGenerator": "seqkit.image_generator",
    "ImageSource": "seqkit.models.patches",
    "Labeler": "seqkit.labeler",
    "LanguageModel": "seqkit.lit.lm",
    "LanguageModelData": "seqkit.data.lm",
    "LoraConfig": "seqkit.lora",
    "MultilingualTranslationData": "seqkit.data.multilingual",
    "NumberWordsData": "seqkit.data.numbers",
    "OptimizerConfig": "seqkit.lit.optim",
    "PatchCodebook": "seqkit.codebook",
    "RNNConfig": "seqkit.models.rnn",
    "RNNLMConfig": "seqkit.models.lm",
    "ReaderConfig": "seqkit.models.vit",
    "SamplingConfig": "seqkit.sampling",
    "Seq2Seq": "seqkit.lit.seq2seq",
    "TextGenerator": "seqkit.generator",
    "TextToImage": "seqkit.lit.text2image",
    "TextToImageData": "seqkit.data.text2image",
    "TransformerConfig": "seqkit.models.transformer",
    "TransformerLMConfig": "seqkit.models.lm",
    "TranslationData": "seqkit.data.translation",
    "Translator": "seqkit.translator",
    "ViTConfig": "seqkit.models.vit",
}
__all__ = [
    "Classifier",
    "DecodingConfig",
    "DigitStripData",
    "ImageData",
    "ImageGenerator",
    "ImageSource",
    "Labeler",
    "LanguageModel",
    "LanguageModelData",
    "LoraConfig",
    "MultilingualTranslationData",
    "NumberWordsData",
    "OptimizerConfig",
    "PatchCodebook",
    "RNNConfig",
    "RNNLMConfig",
    "ReaderConfig",
    "SamplingConfig",
    "Seq2Seq",
    "TextGenerator",
    "TextToImage",
    "TextToImageData",
    "TransformerConfig",
    "TransformerLMConfig",
    "TranslationData",
    "Translator",
    "ViTConfig",
]

if TYPE_CHECKING:
    from seqkit.codebook import PatchCodebook
    from seqkit.data.lm import LanguageModelData
    from seqkit.data.multilingual import MultilingualTranslationData
    from seqkit.data.numbers import NumberWordsData
    from seqkit.data.patches import ImageData
    from seqkit.data.strips import DigitStripData
    from seqkit.data.text2image import TextToImageData
    from seqkit.data.translation import TranslationData
    from seqkit.decoding import DecodingConfig
    from seqkit.generator import TextGenerator
    from seqkit.image_generator import ImageGenerator
    from seqkit.labeler import Labeler
    from seqkit.lit.classifier import Classifier
    from seqkit.lit.lm import LanguageModel
    from seqkit.lit.optim import OptimizerConfig
    from seqkit.lit.seq2seq import Seq2Seq
    from seqkit.lit.text2image import TextToImage
    from seqkit.lora import LoraConfig
    from seqkit.models import ReaderConfig, RNNConfig, TransformerConfig, ViTConfig
    from seqkit.models.lm import RNNLMConfig, TransformerLMConfig
    from seqkit.models.patches import ImageSource
    from seqkit.sampling import SamplingConfig
    from seqkit.translator import Translator


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'seqkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
