"""Model directories as untrusted input: the tokenizer file(s) are read and checked against
config.json before any weight is allocated, and every refusal names the file."""

import json
import shutil
from pathlib import Path

import pytest
from test_cli import seqkit

from seqkit.errors import DataError
from seqkit.translator import Translator

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading fails the test if it reaches the weights."""

    def load_network(*args, **kwargs):
        raise AssertionError("the weights were allocated before the tokenizer was checked")

    monkeypatch.setattr("seqkit.translator.load_network", load_network)


def legacy_copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


def edit(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def grow(n: int):
    """A change adding `n` tokens to a tokenizer's vocabulary."""

    def change(data: dict) -> None:
        vocab = data["model"]["vocab"]
        start = len(vocab)
        vocab.update({f"extra{i}": start + i for i in range(n)})

    return change


@pytest.mark.parametrize(
    "name, file, key",
    [("transformer", "tokenizer.json", "src_vocab_size"),
     ("gru-bahdanau", "source_tokenizer.json", "src_vocab_size"),
     ("gru-bahdanau", "target_tokenizer.json", "tgt_vocab_size"),
     ("strip-reader", "tokenizer.json", "tgt_vocab_size")],  # its source is images
)  # fmt: skip
def test_a_tokenizer_disagreeing_with_config_json_is_refused_naming_both(
    name, file, key, tmp_path, no_weights
):
    directory = legacy_copy(name, tmp_path)
    size = json.loads((directory / "config.json").read_text())["config"][key]
    edit(directory / file, grow(20))
    with pytest.raises(DataError) as refused:
        Translator.from_pretrained(directory)
    assert str(refused.value) == (f"{directory / file}: a vocabulary of {size + 20} tokens, "
                                  f"but {directory / 'config.json'} has {key}={size}")  # fmt: skip


def test_an_enormous_vocabulary_is_refused_before_any_weight_is_allocated(tmp_path, no_weights):
    directory = legacy_copy("transformer", tmp_path)
    original = (directory / "tokenizer.json").read_text()
    edit(directory / "tokenizer.json", grow(40_000))
    with pytest.raises(DataError, match=r"tokenizer\.json: a vocabulary of 40280 tokens"):
        Translator.from_pretrained(directory)
    (directory / "tokenizer.json").write_text(original + " " * (2 << 20))  # refused unread
    with pytest.raises(DataError, match=r"tokenizer\.json: \d+ bytes, more than the vocab"):
        Translator.from_pretrained(directory)
    (directory / "tokenizer.json").write_text(original)
    edit(directory / "config.json", lambda d: d["config"].update(src_vocab_size=10**9,
                                                                 tgt_vocab_size=10**9))  # fmt: skip
    with pytest.raises(DataError, match=r"config\.json has src_vocab_size=1000000000"):
        Translator.from_pretrained(directory)


def rename(old: str, new: str):
    def change(data: dict) -> None:
        vocab = data["model"]["vocab"]
        vocab[new] = vocab.pop(old)
        for token in data["added_tokens"]:
            token["content"] = new if token["content"] == old else token["content"]

    return change


@pytest.mark.parametrize(
    "old, new, message",
    [("<unk>", "<oov>", "'<unk>' must have id 3"), ("<s>", "<bos>", "'<s>' must have id 1")],
)
def test_a_tokenizer_without_seqkits_special_tokens_is_refused(
    old, new, message, tmp_path, no_weights
):
    directory = legacy_copy("gru-bahdanau", tmp_path)
    edit(directory / "target_tokenizer.json", rename(old, new))
    with pytest.raises(DataError, match=rf"target_tokenizer\.json: special token {message}"):
        Translator.from_pretrained(directory)


def test_translate_refuses_a_disagreeing_tokenizer_in_one_line(tmp_path):
    directory = legacy_copy("transformer", tmp_path)
    edit(directory / "tokenizer.json", grow(3))
    result = seqkit("translate", "--model", str(directory), stdin="seven\n")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"seqkit translate: {directory / 'tokenizer.json'}: a "
                                     f"vocabulary of 283 tokens, but {directory / 'config.json'} "
                                     "has src_vocab_size=280")  # fmt: skip


def test_an_export_stopped_halfway_over_an_earlier_one_is_refused_not_mixed(tmp_path, monkeypatch):
    # Export A, then export B into the same directory, stopped while writing B's weights:
    # what is left must not load as B's config.json with A's weights, or the reverse.
    translator = Translator.from_pretrained(LEGACY / "transformer")
    out = translator.save_pretrained(tmp_path / "model")

    def stopped(net, path):
        Path(path).write_bytes(b"\0" * 10)  # a kill mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr("seqkit.pretrained.save_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        translator.save_pretrained(out)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"config\.json: not found"):
        Translator.from_pretrained(out)
    assert translator.save_pretrained(out) == out  # exporting again repairs it
    assert Translator.from_pretrained(out).translate(["one"]) == translator.translate(["one"])


def test_a_model_directory_names_its_origins_without_local_paths(tmp_path):
    """The data, the model fine-tuned from and the recipe by name (init_from and the recipe
    kept the training machine's absolute paths before)."""
    translator = Translator.from_pretrained(LEGACY / "transformer")
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    translator.provenance = {
        "data": {"path": str(tmp_path / "corpora" / "my.tsv")},
        "init_from": str(tmp_path / "models" / "base"),
        "recipe": f"{recipes / 'finetune.yaml'} {tmp_path / 'mine.yaml'}",
    }
    out = translator.save_pretrained(tmp_path / "model")
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["data"]["path"] == "my.tsv"
    assert provenance["init_from"] == "base"
    assert provenance["recipe"] == "recipes/finetune.yaml mine.yaml"
    for name in ("config.json", "README.md"):
        assert str(tmp_path) not in (out / name).read_text(), name
