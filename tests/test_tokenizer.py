"""BPE tokenizers: exact round trips, fixed special ids, save/load, decoding rules."""

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
    train_bpe,
)

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
