"""seqkit: sequence models (RNN, GRU, LSTM, Transformer, ViT) on Lightning and Hugging Face data."""

from seqkit.data import NumberWordsData, TranslationData
from seqkit.lit.optim import OptimizerConfig
from seqkit.lit.seq2seq import DecodingConfig, Seq2Seq
from seqkit.models import RNNConfig, TransformerConfig

__version__ = "0.1.0"

__all__ = [
    "DecodingConfig",
    "NumberWordsData",
    "OptimizerConfig",
    "RNNConfig",
    "Seq2Seq",
    "TransformerConfig",
    "TranslationData",
]
