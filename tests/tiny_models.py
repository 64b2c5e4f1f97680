"""Tiny trained models that tests share (not a test module: pytest collects test_*.py)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from num2words import num2words

from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.models import TransformerConfig, build_model
from seqkit.tokens import BOS, PAD
from seqkit.translator import Translator

PAIRS = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]
GREEDY = DecodingConfig(beam_size=1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread inside the block: tiny matrices gain nothing from threads
    and lose much when other processes share the cores (OpenMP workers spin waiting for each
    other); and one thread count everywhere keeps the last bit of every sum alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained(tokenizers: Tokenizers, pairs: list[tuple[str, str]], steps: int, **options):
    """A tiny Transformer after `steps` full-batch Adam steps on `pairs`: its outputs depend on
    the source and end with EOS at varied lengths (an untrained one repeats one token)."""
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=tokenizers.src_vocab_size,
                               tgt_vocab_size=tokenizers.tgt_vocab_size, d_model=32, n_heads=4,
                               n_encoder_layers=2, n_decoder_layers=2, d_ff=64, dropout=0.0,
                               **{"max_positions": 64, **options})  # fmt: skip
    net = build_model(config)
    src = pad(tokenizers.encode_source([s for s, _ in pairs]))
    tgt = pad(tokenizers.encode_target([t for _, t in pairs]))
    tgt_in = torch.cat([torch.full((len(pairs), 1), BOS), tgt[:, :-1]], dim=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(steps):
            loss = F.cross_entropy(net(src, tgt_in).transpose(1, 2), tgt, ignore_index=PAD)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return Translator(net.eval(), tokenizers, GREEDY)
