"""Vocabulary extension: N more BPE merges, learned on new data, appended to a trained
byte-level BPE tokenizer (`--data.extend_vocab N`).

BPE training continues where the old tokenizer stopped (Sennrich et al., 2016): every word
of the new text starts from the old tokenizer's segmentation, and the most frequent adjacent
pair of pieces is merged, N times. The merges are appended after the old ones and new tokens
get ids after the old ids; every old id and merge is kept, in order.

What "old text tokenizes exactly as before" means. The `tokenizers` BPE applies the merge of
lowest rank first, so in any word every old merge fires before a new one, and the old
segmentation is reached unchanged; a new merge can then fire only where its two pieces stand
side by side in that old segmentation. A useful merge joins two old pieces, and nothing stops
the same two pieces from meeting in some old-language word, so no appended merge list keeps
*all* text as it was. What is guaranteed: (1) every word of the `protect` text keeps its old
tokens exactly, because no pair found in its old segmentation is ever learned (and a merge
holding a new token cannot fire before one of old pieces has); (2) any word whose old
segmentation holds none of the new pairs keeps its tokens. `TranslationData` protects the
new data's sides whose language the model was trained on (en in en→de followed by en→fr),
and learns merges on the others.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable

from tokenizers import Tokenizer

from seqkit.data.tokenizer import Tokenizers, read_tokenizer

Pair = tuple[str, str]


def extend_bpe(
    tokenizer: Tokenizer,
    texts: Iterable[str],
    n_merges: int,
    *,
    min_frequency: int = 2,
    protect: Iterable[str] = (),
) -> Tokenizer:
    """`tokenizer` with up to `n_merges` merges learned on `texts` appended (fewer when no
    pair of pieces occurs `min_frequency` times); no merge joins two pieces that stand side by
    side in the old segmentation of a word of `protect`, so those words tokenize as before.

    Raises:
        ValueError: for a negative `n_merges`.
        DataError: when the result is not a tokenizer `read_tokenizer` accepts.
    """
    if n_merges < 0:
        raise ValueError(f"extend_vocab={n_merges}: the number of merges must be >= 0")
    if n_merges == 0:
        return tokenizer
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    banned = {pair for word in segment(tokenizer, protect) for pair in itertools.pairwise(word)}
    learned = learn_merges(segment(tokenizer, texts), n_merges, min_frequency, banned)
    next_id = tokenizer.get_vocab_size(with_added_tokens=True)
    for a, b in learned:
        if a + b not in model["vocab"]:  # else the merge reaches an old token another way
            model["vocab"][a + b], next_id = next_id, next_id + 1
    as_text = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"] += [f"{a} {b}" if as_text else [a, b] for a, b in learned]
    return read_tokenizer(json.dumps(data, ensure_ascii=False), "extended tokenizer")


def segment(tokenizer: Tokenizer, texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """How often each word (pre-token) of `texts` occurs, as the tuple of its pieces under
    `tokenizer`'s merges."""
    words: Counter[str] = Counter()
    for text in texts:
        words.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text))
    model = tokenizer.model
    return Counter({tuple(t.value for t in model.tokenize(w)): n for w, n in words.items()})


def learn_merges(
    words: Counter[tuple[str, ...]], n_merges: int, min_frequency: int, banned: set[Pair]
) -> list[Pair]:
    """Up to `n_merges` BPE merges on segmented words: each time the most frequent adjacent
    pair not in `banned` (ties: the smallest pair), while it occurs `min_frequency` times.
    Pair counts are updated only in the words that hold the merged pair."""
    seqs = [list(w) for w in words]
    counts = list(words.values())
    stats: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in itertools.pairwise(seq):
            stats[pair] += counts[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in stats.items() if pair not in banned]
    heapq.heapify(heap)
    learned: list[Pair] = []
    while heap and len(learned) < n_merges:
        negative, pair = heapq.heappop(heap)
        if stats[pair] != -negative:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -negative < min_frequency:
            break
        learned.append(pair)
        changed: set[Pair] = set()
        for i in sorted(where.pop(pair)):
            old, new = seqs[i], _merge(seqs[i], pair)
            if len(new) == len(old):
                continue
            for p in itertools.pairwise(old):
                stats[p] -= counts[i]
                changed.add(p)
            for p in itertools.pairwise(new):
                stats[p] += counts[i]
                where[p].add(i)
                changed.add(p)
            seqs[i] = new
        for p in changed - banned - {pair}:
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
        stats.pop(pair, None)
    return learned


def _merge(seq: list[str], pair: Pair) -> list[str]:
    """`seq` with every occurrence of `pair` joined, left to right (as `tokenizers` does)."""
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def extend_tokenizers(
    base: Tokenizers,
    sources: list[str],
    targets: list[str],
    n_merges: int,
    *,
    min_frequency: int = 2,
    old_sides: frozenset[str] = frozenset(),
) -> Tokenizers:
    """`base` extended by merges learned on the new sides of parallel text: for a joint
    tokenizer, one list of `n_merges` on both sides' text except the `old_sides` ("source",
    "target": a language the model already knows), whose words are protected instead; for
    a tokenizer per side, `n_merges` each on its own side unless that side is old."""
    texts = {"source": sources, "target": targets}
    new = [side for side in texts if side not in old_sides]
    if base.joint:
        learn = [t for side in new for t in texts[side]]
        keep = [t for side in sorted(old_sides) for t in texts[side]]
        shared = extend_bpe(base.source, learn, n_merges, min_frequency=min_frequency,
                            protect=keep)  # fmt: skip
        return Tokenizers(shared, shared)
    sides = {}
    for side, tokenizer in (("source", base.source), ("target", base.target)):
        n = n_merges if side in new else 0
        sides[side] = extend_bpe(tokenizer, texts[side], n, min_frequency=min_frequency)
    return Tokenizers(sides["source"], sides["target"])


def old_sides(base: Tokenizers, model_dir: str | None, src_lang: str, tgt_lang: str):
    """The sides ("source", "target") of new data in a language the model in `model_dir` was
    trained on, as its config.json provenance names them: any of its two languages for a
    joint tokenizer, the same side's otherwise. Empty when it names none."""
    from seqkit.data.fertility import recorded_languages

    known = recorded_languages(model_dir)
    langs = {"source": src_lang, "target": tgt_lang}
    if base.joint:
        return frozenset(side for side, lang in langs.items() if lang in known.values())
    return frozenset(side for side, lang in langs.items() if known.get(side) == lang)


def _merges(tokenizer: Tokenizer) -> list[Pair]:
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def extends(new: Tokenizers, old: Tokenizers) -> bool:
    """Whether `new` is `old` with tokens appended: the same joint-ness, and on each side
    every old token at its old id and the old merges first, in order."""
    if new.joint != old.joint:
        return False
    for a, b in ((new.source, old.source), (new.target, old.target)):
        vocab = a.get_vocab(with_added_tokens=True)
        if any(vocab.get(token) != i for token, i in b.get_vocab(with_added_tokens=True).items()):
            return False
        old_merges = _merges(b)
        if _merges(a)[: len(old_merges)] != old_merges:
            return False
    return True


def new_token_pieces(old: Tokenizer, new: Tokenizer) -> list[list[int]]:
    """For each token of `new` past `old`'s vocabulary, in id order: the old ids of the
    pieces `old`'s merges cut the token's string into."""
    start = old.get_vocab_size(with_added_tokens=True)
    by_id = {i: t for t, i in new.get_vocab(with_added_tokens=True).items() if i >= start}
    return [[t.id for t in old.model.tokenize(by_id[i])] for i in sorted(by_id)]
