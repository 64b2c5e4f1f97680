"""`seqkit diagnose attention`: every attention weight of a seq2seq model while it decodes a
source (text, or an image for an image-to-text model), for every layer, head and step.

The models' fast path is left as it is. Forward hooks on each attention's query and key/value
projections (`nn.Linear`) keep what they computed, and the weights are redone from those
projections, softmax(q·kᵀ/√Dh) with the model's masks, per head and in eval mode, as
`Transformer.cross_attention` does (`F.scaled_dot_product_attention` returns no weights). An
RNN's Bahdanau or Luong attention returns its weights: a hook keeps them as they are. The
steps are seqkit's own greedy or beam search (`seqkit.decoding.search`) run on a thin wrapper
of the network that records each call; the encoder is recorded once.

Beam search decodes `beam_size` rows at every step. Each step keeps all rows, the tokens fed
to them so far and `reorder_state`'s index (which row of the step before each row continues);
the best hypothesis is then found among the rows of its last step by the tokens fed to it,
and followed back through those indices, so each step shows the row that wrote that
hypothesis.

Layout (S source positions, T steps, L layers, H heads, float32). Step t's query is the token
fed at step t: the start-of-sentence token alone at step 0, so step 0 (step 1 in files and
figures) is the query that writes the first word.

    encoder_self  (L, H, S, S)  query position x key position (Transformer only)
    decoder_self  (T, L, H, T)  step x key step; NaN for keys after the step (Transformer only)
    cross         (T, L, H, S)  step x source position; an RNN has one (L = H = 1)

Padding positions get weight 0. `seqkit.diagnose.attention_files` writes these as .npy files,
a tidy CSV and PNG heat maps.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from seqkit.decoding import DecodingConfig, DecodingError, length_limits, search
from seqkit.models import RNNSeq2Seq, Transformer
from seqkit.models.source import source_mask
from seqkit.tokens import BOS, EOS, token_labels
from seqkit.translator import Translator


@dataclass(frozen=True)
class AttentionRecord:
    """One source's attention while the model wrote its best hypothesis (shapes as in the
    module docstring)."""

    source: list[str]
    """A label per source position (S): its token, "<pad>" on padding, or for an image patch
    its column and row in the patch grid ("c3r1")."""
    inputs: list[str]
    """The token fed at each step (T), the queries: the start-of-sentence token first."""
    outputs: list[str]
    """The token each step wrote (T): the hypothesis, then EOS unless it hit its limit."""
    text: str
    """The hypothesis, detokenized."""
    cross: np.ndarray
    """(T, L, H, S) decoder queries over the source (an RNN: L = H = 1)."""
    encoder_self: np.ndarray | None = None
    """(L, H, S, S) encoder self-attention; None for an RNN."""
    decoder_self: np.ndarray | None = None
    """(T, L, H, T) decoder self-attention, NaN after the step; None for an RNN."""
    image: np.ndarray | None = None
    """The image (height, width, 3) uint8 an image source was cut from, padding excluded."""
    per_column: int = 0
    """Patches in one column of that image (they run top to bottom, column by column)."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights by kind, for the kinds this model has."""
        kinds = {"encoder_self": self.encoder_self, "decoder_self": self.decoder_self,
                 "cross": self.cross}  # fmt: skip
        return {kind: array for kind, array in kinds.items() if array is not None}


class _Recorder:
    """The network on the decoding protocol of `seqkit.decoding`, recording what each call
    attended to; subclasses say how for each kind of network. Use as a context manager: the
    hooks go when it closes."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.encoder: Tensor | None = None  # (B, L, H, S, S)
        self.steps: list[dict[str, Tensor]] = []  # per step: kind -> (N, L, H, keys)
        self.fed: list[Tensor] = []  # per step: (N, t + 1) the tokens fed to each row so far
        self.parents: list[Tensor] = []  # after step t: the row of step t each row continues
        self.hooks: list = []

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        memory = self.net.encode(src, src_mask)
        self.encoder = self.encoded(src_mask)
        return memory

    def init_state(self, memory: Tensor, src_mask: Tensor):
        state = self.net.init_state(memory, src_mask)
        self.started()
        return state

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state):
        logits, state = self.net.decode(tgt, memory, src_mask, state)
        past = self.fed[-1] if self.fed else tgt[:, :0]
        if self.fed and len(self.parents) == len(self.fed):  # beams were reordered since
            past = past[self.parents[-1]]
        self.fed.append(torch.cat([past, tgt], dim=1))
        self.steps.append(self.decoded(src_mask))
        return logits, state

    def reorder_state(self, state, index: Tensor):
        self.parents.append(index)
        self.reordered(index)
        return self.net.reorder_state(state, index)

    def rows(self, fed: list[int]) -> list[int]:
        """The row of each step that was fed `fed` (BOS and the tokens written before the
        last step), found at the last step and followed back through the reorders."""
        last = self.fed[len(fed) - 1]
        row = int((last == torch.tensor(fed, device=last.device)).all(1).nonzero()[0, 0])
        rows = [row]
        for t in range(len(fed) - 2, -1, -1):
            row = int(self.parents[t][row]) if t < len(self.parents) else row
            rows.append(row)
        return rows[::-1]

    # What subclasses record: the encoder (B, L, H, S, S) or None, and per step kind -> (N, L,
    # H, keys) of the one new query of each row.
    def encoded(self, src_mask: Tensor) -> Tensor | None:
        return None

    def started(self) -> None:
        pass

    def decoded(self, src_mask: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def reordered(self, index: Tensor) -> None:
        pass


class _TransformerRecorder(_Recorder):
    """Hooks on every `Attention`'s `q` and `kv` projections; the keys of decoder
    self-attention are kept per layer, reordered with the beams as the model's cache is."""

    def __init__(self, net: Transformer) -> None:
        super().__init__(net)
        self.seen: dict[nn.Module, list[Tensor]] = {}
        attentions = [layer.attn for layer in net.encoder]
        attentions += [a for layer in net.decoder for a in (layer.self_attn, layer.cross_attn)]
        for attn in attentions:
            for projection in (attn.q, attn.kv):
                self.hooks.append(projection.register_forward_hook(self._keep))
        self.cross_keys: list[Tensor] = []  # per layer (B, H, S, Dh)
        self.self_keys: list[Tensor | None] = []  # per layer (N, H, t + 1, Dh)

    def _keep(self, module: nn.Module, args, out: Tensor) -> None:
        self.seen.setdefault(module, []).append(out)

    def _queries(self, attn: nn.Module) -> Tensor:
        (q,) = self.seen.pop(attn.q)  # one call of each projection per network call
        return attn.split_heads(q)  # (N, H, T, Dh)

    def _keys(self, attn: nn.Module) -> Tensor:
        (kv,) = self.seen.pop(attn.kv)
        return attn.split_heads(kv.chunk(2, dim=-1)[0])  # (N, H, T, Dh)

    def encoded(self, src_mask: Tensor) -> Tensor:
        layers = [_weights(self._queries(layer.attn), self._keys(layer.attn), src_mask)
                  for layer in self.net.encoder]  # fmt: skip
        return torch.stack(layers, dim=1)  # (B, L, H, S, S)

    def started(self) -> None:
        self.cross_keys = [self._keys(layer.cross_attn) for layer in self.net.decoder]
        self.self_keys = [None] * len(self.net.decoder)

    def decoded(self, src_mask: Tensor) -> dict[str, Tensor]:
        own, cross = [], []
        for i, layer in enumerate(self.net.decoder):
            new, past = self._keys(layer.self_attn), self.self_keys[i]  # (N, H, 1, Dh)
            self.self_keys[i] = new if past is None else torch.cat([past, new], dim=2)
            # One new query sees the whole past: no mask, as in `DecoderLayer`.
            own.append(_weights(self._queries(layer.self_attn), self.self_keys[i], None))
            cross.append(_weights(self._queries(layer.cross_attn), self.cross_keys[i], src_mask))
        # (N, L, H, 1, keys) -> (N, L, H, keys)
        return {"decoder_self": torch.stack(own, 1)[:, :, :, 0],
                "cross": torch.stack(cross, 1)[:, :, :, 0]}  # fmt: skip

    def reordered(self, index: Tensor) -> None:
        self.self_keys = [k.index_select(0, index) for k in self.self_keys]


class _RNNRecorder(_Recorder):
    """A hook on the RNN's one attention module, which returns its weights."""

    def __init__(self, net: RNNSeq2Seq) -> None:
        if net.attention is None:
            raise ValueError("this RNN has attention='none': it has no attention weights to "
                             "show (its decoder reads one summary of the source)")  # fmt: skip
        super().__init__(net)
        self.seen: list[Tensor] = []
        self.hooks.append(net.attention.register_forward_hook(self._keep))

    def _keep(self, module: nn.Module, args, out: tuple[Tensor, Tensor]) -> None:
        self.seen.append(out[1])  # (N, 1, S): one query per step when decoding

    def decoded(self, src_mask: Tensor) -> dict[str, Tensor]:
        (weights,) = self.seen
        self.seen = []
        return {"cross": weights[:, None]}  # (N, L=1, H=1, S)


RECORDERS: dict[type[nn.Module], type[_Recorder]] = {
    Transformer: _TransformerRecorder,
    RNNSeq2Seq: _RNNRecorder,
}


def _weights(q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q·kᵀ/√Dh) (N, H, Tq, Tk) of queries (N, H, Tq, Dh) over keys (N or 1, H, Tk,
    Dh); `mask` (N, Tk) is True where a key may be attended to."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


@torch.inference_mode()
def record_attention(
    translator: Translator,
    src: Tensor,
    src_mask: Tensor | None = None,
    decoding: DecodingConfig | None = None,
) -> list[AttentionRecord]:
    """The attention of each source of a padded batch of token ids (B, S) or image patches
    (B, S, P) with their `src_mask` (B, S), while `translator`'s network decodes it with
    `decoding` (default: the translator's, greedy). Each source is decoded alone, on the
    batch's padded width, so a record's S is the batch's and padding gets weight 0.

    Raises:
        ValueError: for a network without attention (an RNN with attention='none').
    """
    net = translator.net
    if type(net) not in RECORDERS:
        raise ValueError(f"{type(net).__name__}: no attention to record")
    decoding = decoding or translator.decoding.as_greedy()
    src_mask = source_mask(src) if src_mask is None else src_mask
    limits = length_limits(src_mask, decoding, translator.max_positions)
    was_training = net.training
    net.eval()
    try:
        rows = [slice(i, i + 1) for i in range(len(src))]
        return [_record(translator, src[r], src_mask[r], decoding, limits[r]) for r in rows]
    finally:
        net.train(was_training)


def _record(
    translator: Translator, src: Tensor, src_mask: Tensor, decoding: DecodingConfig, limit: Tensor
) -> AttentionRecord:
    with RECORDERS[type(translator.net)](translator.net) as recorder:
        best = search(recorder, src, src_mask, decoding, max_len=limit)[0][0]
    written = [*best.tokens, EOS][: int(limit)]  # EOS too, unless it ran into its limit
    fed = [BOS, *written[:-1]]
    rows = recorder.rows(fed)
    steps = [{k: v[row].float().cpu() for k, v in recorder.steps[t].items()}
             for t, row in enumerate(rows)]  # fmt: skip
    n = len(rows)
    arrays = {"cross": torch.stack([s["cross"] for s in steps]).numpy()}  # (T, L, H, S)
    if recorder.encoder is not None:
        arrays["encoder_self"] = recorder.encoder[0].float().cpu().numpy()
    if "decoder_self" in steps[0]:
        own = torch.full((n, *steps[0]["decoder_self"].shape[:2], n), float("nan"))
        for t, s in enumerate(steps):
            own[t, :, :, : t + 1] = s["decoder_self"]
        arrays["decoder_self"] = own.numpy()  # (T, L, H, T)
    tokenizers, image_source = translator.tokenizers, translator.image_source
    image, per_column = None, 0
    if image_source is None:
        source = token_labels(tokenizers.source, src[0].tolist())
    else:
        per_column = image_source.per_column
        source = [f"c{i // per_column}r{i % per_column}" if real else "<pad>"
                  for i, real in enumerate(src_mask[0].tolist())]  # fmt: skip
        image = image_source.restore(src[0][src_mask[0]])
    return AttentionRecord(source, token_labels(tokenizers.target, fed),
                           token_labels(tokenizers.target, written),
                           tokenizers.decode_target([best.tokens])[0], image=image,
                           per_column=per_column, **arrays)  # fmt: skip


# -- the command ----------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """`seqkit diagnose attention`: record one source's attention and write it under --out."""
    parser = argparse.ArgumentParser(
        prog="seqkit diagnose attention",
        description="Record every attention weight of a seq2seq model while it decodes one "
        "source: encoder self-attention, and at every decoding step (the first is the query "
        "made from the start-of-sentence token alone) decoder self-attention and "
        "cross-attention, for every layer and head. Writes .npy arrays, a tidy CSV and PNG "
        "heat maps (these need matplotlib) under --out, and prints their paths.",
    )
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the source text, for a model that reads text")
    source.add_argument("--image", help="an image file, for a model that reads images")
    parser.add_argument("--out", required=True, help="directory to write into (made if missing)")
    parser.add_argument("--beam-size", "--beam", type=int, default=1,
                        help="1: greedy (default); more: the best hypothesis' steps")  # fmt: skip
    parser.add_argument("--max-len", type=int, help="most output tokens (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.exit(2, f"{parser.prog}: error: argument --out: {out} is not a directory\n")
    given = {"beam_size": args.beam_size, "n_best": 1, "max_len": args.max_len}
    try:
        DecodingConfig(**given)  # the flags alone, before the model loads
    except DecodingError as err:
        flag = {"beam_size": "--beam-size", "max_len": "--max-len"}[err.field]
        parser.exit(2, f"{parser.prog}: error: argument {flag}: {err.reason}\n")
    translator = Translator.from_pretrained(args.model, device=args.device)
    decoding = replace(translator.decoding, **given)  # ValueError naming the field: one line
    src, src_mask = _source(translator, args.text, args.image)
    (record,) = record_attention(translator, src, src_mask, decoding)
    from seqkit.diagnose.attention_files import write_record

    paths = write_record(record, out)
    what = args.text if args.image is None else args.image
    search_name = "greedy" if decoding.beam_size == 1 else f"beam {decoding.beam_size}"
    print(f"{what!r} -> {record.text!r} ({len(record.inputs)} steps, {search_name})",
          file=sys.stderr)  # fmt: skip
    for path in paths:
        print(path.resolve())


def _source(translator: Translator, text: str | None, image: str | None) -> tuple[Tensor, Tensor]:
    """The source (1, S) or (1, S, P) and its mask (1, S) of --text or --image.

    Raises:
        ValueError: for the wrong kind of source, or an empty text.
        DataError: for an image that cannot be read.
    """
    source, device = translator.image_source, translator.device
    if image is None and source is not None:
        raise ValueError("this model reads images, not text: give --image PATH")
    if image is not None and source is None:
        raise ValueError("this model reads text, not images: give --text TEXT")
    if source is None:
        if not text.strip():
            raise ValueError("--text is empty: there is nothing to decode")
        (ids,) = translator.tokenizers.encode_source([text])
        limit = translator.max_positions
        if limit and len(ids) > limit:
            print(f"the text has {len(ids)} tokens: cut to max_positions={limit}", file=sys.stderr)
            ids = [*ids[: limit - 1], EOS]
        src = torch.tensor([ids], device=device)
        return src, source_mask(src)
    from seqkit.data.images import load_images, resize

    x = load_images(image, channels=source.channels)  # (1, C, H', W'), as Translator.read
    p, h = source.patch_size, source.height
    x = resize(x, (h, max(p, round(x.shape[3] * h / x.shape[2] / p) * p)))
    return source.cut(x.to(device))
