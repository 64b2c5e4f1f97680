"""seqkit: sequence models (RNN, GRU, LSTM, Transformer, ViT) on Lightning and Hugging Face data."""

from seqkit.data import NumberWordsData, TranslationData
from seqkit.data.patches import ImageData
from seqkit.data.strips import DigitStripData
from seqkit.lit.classifier import Classifier
from seqkit.lit.optim import OptimizerConfig
from seqkit.lit.seq2seq import DecodingConfig, Seq2Seq
from seqkit.models import ReaderConfig, RNNConfig, TransformerConfig, ViTConfig

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "DecodingConfig",
    "DigitStripData",
    "ImageData",
    "NumberWordsData",
    "OptimizerConfig",
    "RNNConfig",
    "ReaderConfig",
    "Seq2Seq",
    "TransformerConfig",
    "TranslationData",
    "ViTConfig",
]
