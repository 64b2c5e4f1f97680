"""Byte-level BPE tokenizers (Hugging Face `tokenizers`) for the source and target side."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from seqkit.errors import DataError
from seqkit.tokens import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "Tokenizers",
    "read_tokenizer",
    "train_bpe",
]

JOINT_FILE = "tokenizer.json"
SOURCE_FILE = "source_tokenizer.json"
TARGET_FILE = "target_tokenizer.json"

# Byte-level BPE needs its 256 base symbols plus the special tokens before any merge.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose ids 0-3 are `SPECIAL_TOKENS`.

    Byte-level rather than Metaspace: every string maps to bytes the vocabulary always holds,
    so there is no `<unk>` and `decode(encode(text)) == text` exactly, whitespace runs and
    any Unicode included; Metaspace folds whitespace and needs a prefix-space convention.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs at least {MIN_VOCAB_SIZE}")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK]))
    # No normalizer: the text must come back byte for byte (references for BLEU are raw text).
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        # The full byte alphabet, so bytes unseen in training still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def read_tokenizer(text: str, name: str) -> Tokenizer:
    """The tokenizer whose JSON is `text` (a file's or a checkpoint's: untrusted input), if it
    is byte-level BPE as `train_bpe` makes it: `SPECIAL_TOKENS` at ids 0-3, every id below its
    vocabulary size (the rows of the embedding it indexes), no truncation or padding of its own.

    Raises:
        DataError: naming `name`, for anything else.
    """
    if not isinstance(text, str):
        raise DataError(f"{name}: not a tokenizer file: holds a {type(text).__name__}, not text")
    _check_json(text, name)
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a plain Exception for a file it cannot read
        raise DataError(f"{name}: not a tokenizer file: {err}") from None
    except BaseException as err:  # a Rust panic, for a model the checks above did not foresee
        if type(err).__name__ != "PanicException":
            raise
        raise DataError(f"{name}: not a tokenizer file: {err}") from None
    _check_specials(tokenizer, name)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    token, token_id = max(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda t: t[1])
    if token_id >= size:
        raise DataError(f"{name}: token {token!r:.40} has id {token_id}, outside its "
                        f"vocabulary of {size} tokens")  # fmt: skip
    return tokenizer


def _check_json(text: str, name: str) -> None:
    """What `tokenizers` would accept but seqkit cannot use, or would panic on."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, nesting
        raise DataError(f"{name}: not a tokenizer file: invalid JSON ({err})") from None
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        raise DataError(f"{name}: not a byte-level BPE tokenizer file (model.type is "
                        f"{kind!r:.40}, not 'BPE')")  # fmt: skip
    # seqkit's BPE has none of these; dropout would make encoding random, and tokenizers
    # 0.23 panics on some prefixes and suffixes.
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) is not None:
            raise DataError(f"{name}: model.{key}={model[key]!r:.40}; seqkit's BPE has none")
    for key in ("truncation", "padding"):  # seqkit cuts and pads sequences itself
        if data.get(key) is not None:
            raise DataError(f"{name}: {key}={data[key]!r:.40}; seqkit's tokenizers have none")


def _check_specials(tokenizer: Tokenizer, name: str) -> None:
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise DataError(f"{name}: special token {token!r} must have id {token_id}")


class Tokenizers:
    """A source and a target tokenizer; the same object for both when the vocabulary is joint."""

    def __init__(self, source: Tokenizer, target: Tokenizer) -> None:
        _check_specials(source, "source tokenizer")
        _check_specials(target, "target tokenizer")
        for tokenizer in (source, target):
            # "<s>" or "<pad>" in user text is text: without this, `tokenizers` matches the
            # special tokens inside it and yields their ids (a BOS mid-sentence, a PAD that
            # decoding drops). Not saved in tokenizer.json, so every load sets it here.
            tokenizer.encode_special_tokens = True
        self.source = source
        self.target = target

    @property
    def joint(self) -> bool:
        return self.source is self.target

    @property
    def src_vocab_size(self) -> int:
        return self.source.get_vocab_size(with_added_tokens=True)

    @property
    def tgt_vocab_size(self) -> int:
        return self.target.get_vocab_size(with_added_tokens=True)

    def encode_source(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text followed by EOS."""
        return _encode(self.source, texts)

    def encode_target(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text followed by EOS (the model prepends BOS itself)."""
        return _encode(self.target, texts)

    def decode_source(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence, up to its first EOS, special tokens dropped."""
        return _decode(self.source, ids)

    def decode_target(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence, up to its first EOS, special tokens dropped."""
        return _decode(self.target, ids)

    @classmethod
    def train(
        cls,
        source_texts: Sequence[str],
        target_texts: Sequence[str],
        vocab_size: int,
        joint: bool = True,
        min_frequency: int = 2,
    ) -> Tokenizers:
        """Train one tokenizer on both sides (`joint`) or one per side, each of `vocab_size`."""
        if joint:
            shared = train_bpe(
                itertools.chain(source_texts, target_texts), vocab_size, min_frequency
            )
            return cls(shared, shared)
        source = train_bpe(source_texts, vocab_size, min_frequency)
        return cls(source, train_bpe(target_texts, vocab_size, min_frequency))

    def save(self, directory: str | Path) -> list[Path]:
        """Write `tokenizer.json` (joint) or `source_tokenizer.json` + `target_tokenizer.json`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in (JOINT_FILE, SOURCE_FILE, TARGET_FILE):
            # A leftover file of the other kind would make `load` read the wrong tokenizer.
            (directory / stale).unlink(missing_ok=True)
        paths = []
        for name, text in self.to_dict().items():
            paths.append(directory / name)
            paths[-1].write_text(text, encoding="utf-8")
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizers:
        """Read the files `save` writes; a joint `tokenizer.json` wins if both kinds exist.

        Raises:
            FileNotFoundError: when there is none.
            DataError: naming the file, when it is not a tokenizer `read_tokenizer` accepts.
        """
        directory = Path(directory)
        names = [JOINT_FILE] if (directory / JOINT_FILE).is_file() else [SOURCE_FILE, TARGET_FILE]
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory}: no tokenizer found; expected {JOINT_FILE} "
                f"or both {SOURCE_FILE} and {TARGET_FILE} (as written by Tokenizers.save)"
            )
        texts = {}
        for name in names:
            try:
                texts[name] = (directory / name).read_text("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{directory / name}: not a tokenizer file: {err}") from None
        return cls.from_dict(texts, directory)

    def to_dict(self) -> dict[str, str]:
        """Tokenizer JSON by file name, e.g. to store inside a checkpoint."""
        if self.joint:
            return {JOINT_FILE: self.source.to_str()}
        return {SOURCE_FILE: self.source.to_str(), TARGET_FILE: self.target.to_str()}

    @classmethod
    def from_dict(cls, data: dict[str, str], directory: str | Path | None = None) -> Tokenizers:
        """Inverse of `to_dict`, each tokenizer checked by `read_tokenizer`; errors name the
        file in `directory` the JSON came from, or its key (a checkpoint's tokenizers).

        Raises:
            DataError: for other keys, or a tokenizer `read_tokenizer` refuses.
        """
        if not isinstance(data, dict):
            raise DataError(f"tokenizers: a {type(data).__name__}, not JSON by file name")
        if JOINT_FILE not in data and not (SOURCE_FILE in data and TARGET_FILE in data):
            raise DataError(f"tokenizer dict has keys {sorted(map(str, data))}; expected "
                            f"{JOINT_FILE!r} or {SOURCE_FILE!r} and {TARGET_FILE!r}")  # fmt: skip

        def read(name: str) -> Tokenizer:
            return read_tokenizer(data[name], str(Path(directory, name)) if directory else name)

        if JOINT_FILE in data:
            shared = read(JOINT_FILE)
            return cls(shared, shared)
        return cls(read(SOURCE_FILE), read(TARGET_FILE))

    def fingerprint(self) -> str:
        """A stable hash of the tokenizer JSON: equal iff the tokenizers encode alike."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def __repr__(self) -> str:
        sizes = f"vocab={self.src_vocab_size}"
        if not self.joint:
            sizes = f"src_vocab={self.src_vocab_size}, tgt_vocab={self.tgt_vocab_size}"
        return f"Tokenizers(joint={self.joint}, {sizes}, fingerprint={self.fingerprint()})"


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [[*encoding.ids, EOS] for encoding in encodings]


def _decode(tokenizer: Tokenizer, ids: Sequence[Sequence[int]]) -> list[str]:
    kept = []
    for seq in ids:
        seq = [int(i) for i in seq]  # accepts tensors and numpy rows too
        if EOS in seq:
            seq = seq[: seq.index(EOS)]
        kept.append([i for i in seq if i >= len(SPECIAL_TOKENS)])
    return tokenizer.decode_batch(kept, skip_special_tokens=True)
