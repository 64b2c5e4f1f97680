"""BPE tokenizers: exact round trips, fixed special ids, save/load, decoding rules, and
tokenizer JSON read as untrusted input."""

import json
from pathlib import Path

import pytest
import torch

from seqkit.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    Tokenizers,
    read_tokenizer,
    train_bpe,
)
from seqkit.errors import DataError

ENGLISH = [
    "Two young, White males are outside near many bushes.",
    "A man in an orange hat starring at something.",
    "three hundred and forty-two thousand, one hundred and five",
    "It costs $3.50 (about 20% off) -- really?!",
    "A café with a naïve façade, déjà vu.",
]
GERMAN = [
    "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
    "dreihundertzweiundvierzigtausendeinhundertfünf",
    "Größe: 1,75 m; Gewicht ≈ 70 kg – „Grüße“ aus Köln!",
    "Straße, Öl, Übung, Äpfel; ÄÖÜ äöü ß.",
]
# Unseen in training: other scripts, emoji, odd whitespace, leading space.
UNSEEN = ["日本語のテキスト 🚀", "  two  spaces\tand a tab ", "Ελληνικά και русский"]


@pytest.fixture(scope="module")
def joint() -> Tokenizers:
    return Tokenizers.train(ENGLISH * 3, GERMAN * 3, vocab_size=400, joint=True)


@pytest.fixture(scope="module")
def separate() -> Tokenizers:
    return Tokenizers.train(ENGLISH * 3, GERMAN * 3, vocab_size=400, joint=False)


@pytest.mark.parametrize("kind", ["joint", "separate"])
def test_round_trip_is_exact(kind: str, request: pytest.FixtureRequest) -> None:
    tokenizers: Tokenizers = request.getfixturevalue(kind)
    texts = ENGLISH + GERMAN + UNSEEN
    assert tokenizers.decode_source(tokenizers.encode_source(texts)) == texts
    assert tokenizers.decode_target(tokenizers.encode_target(texts)) == texts


def test_encode_appends_eos_without_bos(joint: Tokenizers) -> None:
    for ids in joint.encode_source(ENGLISH) + joint.encode_target(GERMAN):
        assert ids[-1] == EOS
        assert EOS not in ids[:-1] and BOS not in ids and PAD not in ids and UNK not in ids


def test_merges_are_learned(joint: Tokenizers) -> None:
    # Fewer tokens than UTF-8 bytes: BPE merged something, not a byte-per-token fallback.
    ids = joint.encode_target([GERMAN[0]])[0]
    assert len(ids) < len(GERMAN[0].encode("utf-8")) / 2


def test_special_ids_are_fixed(separate: Tokenizers) -> None:
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    for tokenizer in (separate.source, separate.target):
        assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_joint_and_separate(joint: Tokenizers, separate: Tokenizers) -> None:
    assert joint.joint and joint.source is joint.target
    assert joint.src_vocab_size == joint.tgt_vocab_size == 400
    assert not separate.joint
    # Each side learned its own language: the German vocabulary holds German merges.
    assert separate.source.get_vocab() != separate.target.get_vocab()
    assert len(separate.encode_target([GERMAN[0]])[0]) < len(separate.encode_source([GERMAN[0]])[0])


@pytest.mark.parametrize("kind", ["joint", "separate"])
def test_save_load_gives_identical_encodings(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tokenizers: Tokenizers = request.getfixturevalue(kind)
    files = tokenizers.save(tmp_path)
    expected = {"tokenizer.json"}
    if kind == "separate":
        expected = {"source_tokenizer.json", "target_tokenizer.json"}
    assert {file.name for file in files} == expected == {p.name for p in tmp_path.iterdir()}
    loaded = Tokenizers.load(tmp_path)
    assert loaded.joint == tokenizers.joint
    assert loaded.fingerprint() == tokenizers.fingerprint()
    texts = ENGLISH + GERMAN + UNSEEN
    assert loaded.encode_source(texts) == tokenizers.encode_source(texts)
    assert loaded.encode_target(texts) == tokenizers.encode_target(texts)


def test_save_replaces_the_other_kind(joint: Tokenizers, separate: Tokenizers, tmp_path: Path):
    joint.save(tmp_path)
    separate.save(tmp_path)
    assert not Tokenizers.load(tmp_path).joint
    joint.save(tmp_path)
    assert Tokenizers.load(tmp_path).joint


def test_load_names_the_directory_when_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizers.load(tmp_path)


@pytest.mark.parametrize("kind", ["joint", "separate"])
def test_to_dict_from_dict(kind: str, request: pytest.FixtureRequest) -> None:
    tokenizers: Tokenizers = request.getfixturevalue(kind)
    data = tokenizers.to_dict()
    assert all(isinstance(value, str) for value in data.values())
    restored = Tokenizers.from_dict(data)
    assert restored.joint == tokenizers.joint
    assert restored.fingerprint() == tokenizers.fingerprint()
    assert restored.encode_target(GERMAN) == tokenizers.encode_target(GERMAN)


def test_from_dict_rejects_unknown_keys(joint: Tokenizers) -> None:
    with pytest.raises(ValueError, match=r"source_tokenizer\.json"):
        Tokenizers.from_dict({"model": joint.source.to_str()})


def mangled(tokenizers: Tokenizers, change) -> str:
    """The JSON of `tokenizers.source` after `change(data)`."""
    data = json.loads(tokenizers.source.to_str())
    change(data)
    return json.dumps(data)


def swap_specials(data: dict) -> None:
    vocab = data["model"]["vocab"]
    vocab["<s>"], vocab["</s>"] = vocab["</s>"], vocab["<s>"]
    for token in data["added_tokens"]:
        token["id"] = vocab[token["content"]]


@pytest.mark.parametrize(
    "change, message",
    [(lambda d: d["model"].update(type="WordPiece"), "not a byte-level BPE"),
     (lambda d: d["model"].pop("type"), "model.type is None"),
     (lambda d: d["model"].update(continuing_subword_prefix="½"), "continuing_subword_prefix"),
     (lambda d: d["model"].update(dropout=0.5), "dropout"),
     (lambda d: d.update(truncation={"max_length": 3, "stride": 10}), "truncation"),
     (lambda d: d["model"]["vocab"].update(far=10**9), "'far' has id 1000000000, outside"),
     (lambda d: d["model"].update(merges=[["no", 3]]), "not a tokenizer file"),
     (swap_specials, "special token '<s>' must have id 1"),
     (lambda d: d["added_tokens"].pop() and d["model"]["vocab"].pop("<unk>"), "'<unk>'")],
    ids=["wordpiece", "no-type", "prefix", "dropout", "truncation", "far-id", "bad-merge",
         "swapped-specials", "no-unk"],
)  # fmt: skip
def test_read_tokenizer_refuses_what_seqkit_cannot_use_naming_it(joint, change, message, capfd):
    with pytest.raises(DataError, match=rf"^in/tokenizer\.json: .*{message}"):
        read_tokenizer(mangled(joint, change), "in/tokenizer.json")
    assert "panicked" not in capfd.readouterr().err  # tokenizers was never handed it


@pytest.mark.parametrize("text", ["{garbage", "[]", "1" * 5000, "[" * 100_000, b"{}", ""])
def test_read_tokenizer_refuses_text_that_is_not_a_tokenizer(text) -> None:
    with pytest.raises(DataError, match=r"^x\.json: not a "):
        read_tokenizer(text, "x.json")


def test_from_dict_names_the_file_and_load_names_the_path(joint, separate, tmp_path) -> None:
    data = {**separate.to_dict(), "target_tokenizer.json": mangled(separate, swap_specials)}
    with pytest.raises(DataError, match=r"^target_tokenizer\.json: special token"):
        Tokenizers.from_dict(data)  # a checkpoint's tokenizers
    with pytest.raises(DataError, match=r"^tokenizers: a list"):
        Tokenizers.from_dict([joint.source.to_str()])
    joint.save(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(DataError, match=rf"^{tmp_path}/tokenizer\.json: not a tokenizer file"):
        Tokenizers.load(tmp_path)


def test_decode_stops_at_eos_and_drops_specials(joint: Tokenizers) -> None:
    text_ids = joint.encode_target(GERMAN[:2])
    first = text_ids[0][:-1]
    noisy = [
        [BOS, *first, EOS, *text_ids[1], PAD],  # whatever follows the first EOS is ignored
        [BOS, UNK, *first[:3], PAD, *first[3:], PAD, PAD],  # no EOS: decode everything
    ]
    assert joint.decode_target(noisy) == [GERMAN[0], GERMAN[0]]
    padded = torch.tensor([[*text_ids[1], PAD, PAD]])
    assert joint.decode_target(padded) == [GERMAN[1]]  # tensors work too
    assert joint.decode_target([[EOS, *first]]) == [""]


def test_training_is_deterministic(joint: Tokenizers) -> None:
    again = Tokenizers.train(ENGLISH * 3, GERMAN * 3, vocab_size=400, joint=True)
    assert again.fingerprint() == joint.fingerprint()


def test_fingerprint_differs_for_different_tokenizers(joint: Tokenizers, separate: Tokenizers):
    smaller = Tokenizers.train(ENGLISH * 3, GERMAN * 3, vocab_size=300, joint=True)
    fingerprints = {joint.fingerprint(), separate.fingerprint(), smaller.fingerprint()}
    assert len(fingerprints) == 3


def test_train_bpe_rejects_a_vocabulary_below_the_byte_alphabet() -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe(ENGLISH, vocab_size=100)


@pytest.mark.parametrize("kind", ["joint", "separate"])
def test_special_token_strings_in_text_are_text(kind: str, request, tmp_path: Path) -> None:
    """`<s>`, `</s>`, `<pad>` and `<unk>` written in a sentence never become special ids, and
    the sentence comes back whole; a saved and reloaded tokenizer behaves the same."""
    tokenizers: Tokenizers = request.getfixturevalue(kind)
    texts = ["strike <s>this</s> out", "das Tag <pad> bleibt", "<unk>", "a</s>b<s>"]
    tokenizers.save(tmp_path)
    for tok in (tokenizers, Tokenizers.load(tmp_path)):
        for encode, decode in ((tok.encode_source, tok.decode_source),
                               (tok.encode_target, tok.decode_target)):  # fmt: skip
            ids = encode(texts)
            assert all(i >= len(SPECIAL_TOKENS) for row in ids for i in row[:-1])
            assert decode(ids) == texts
