"""Target-language tags: one model, several target languages (`seqkit.data.tags`,
`MultilingualTranslationData`, `Translator.translate(tgt_lang=)`, `seqkit translate --tgt-lang`)."""

import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from num2words import num2words

from seqkit.cli import main
from seqkit.data.batching import pad
from seqkit.data.multilingual import MultilingualTranslationData
from seqkit.data.tags import add_language_tags, language_tag, tag_sources, target_languages
from seqkit.data.tokenizer import SPECIAL_TOKENS, Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.models import TransformerConfig, build_model
from seqkit.tokens import BOS, PAD
from seqkit.translator import Translator

pytestmark = pytest.mark.usefixtures("one_thread")

NUMBERS = list(range(1, 150, 4))
WORDS = {lang: [num2words(n, lang=lang) for n in NUMBERS] for lang in ("en", "de", "fr")}
SPLITS = {"train": "train", "val": "val", "test": "test"}


@pytest.fixture(scope="module")
def base() -> Tokenizers:
    return Tokenizers.train(WORDS["en"], WORDS["de"] + WORDS["fr"], vocab_size=400)


@pytest.fixture(scope="module")
def tagged(base: Tokenizers) -> Tokenizers:
    return add_language_tags(base, ["de", "fr"])


# --- tags in the tokenizer ----------------------------------------------------------------------


def test_tags_are_single_special_tokens_after_the_vocabulary(base, tagged):
    size = base.src_vocab_size
    assert target_languages(tagged) == {"de": size, "fr": size + 1}
    assert tagged.src_vocab_size == tagged.tgt_vocab_size == size + 2  # joint: both sides
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tagged.source.token_to_id(token) == token_id
    assert target_languages(base) == {}  # the given tokenizers are left unchanged
    assert base.src_vocab_size == size
    assert add_language_tags(tagged, ["fr", "de"]) is tagged  # idempotent: same ids
    grown = add_language_tags(tagged, ["it"])
    assert target_languages(grown) == {"de": size, "fr": size + 1, "it": size + 2}


def test_separate_vocabularies_grow_the_source_only():
    tokenizers = Tokenizers.train(WORDS["en"], WORDS["de"], vocab_size=300, joint=False)
    tagged = add_language_tags(tokenizers, ["de"])
    assert tagged.src_vocab_size == tokenizers.src_vocab_size + 1
    assert tagged.target is tokenizers.target


def test_text_that_looks_like_a_tag_is_text(tagged):
    tag = target_languages(tagged)["de"]
    (ids,) = tagged.encode_source(["<2de> twenty-one"])
    assert tag not in ids and len(ids) > 3
    assert tagged.decode_source([ids]) == ["<2de> twenty-one"]
    assert tagged.decode_target([[tag, *ids]]) == ["<2de> twenty-one"]  # a tag id writes nothing
    reloaded = Tokenizers.from_dict(tagged.to_dict())
    assert reloaded.encode_source(["<2de> twenty-one"]) == [ids]


@pytest.mark.parametrize("lang", ["", "d e", "2de", "de>", "x" * 40])
def test_codes_that_cannot_be_tags_are_refused(lang):
    with pytest.raises(ValueError, match="language code"):
        language_tag(lang)


# --- the data module ----------------------------------------------------------------------------


def write_corpus(directory: Path) -> Path:
    """train/val/test .en/.de/.fr in Multi30k's layout: number words."""
    directory.mkdir()
    ranges = {"train": range(0, 300), "val": range(1000, 1010), "test": range(2000, 2008)}
    for split, numbers in ranges.items():
        for lang in ("en", "de", "fr"):
            text = "".join(num2words(n, lang=lang) + "\n" for n in numbers)
            with gzip.open(directory / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write(text)
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("multilingual") / "corpus")


def make(corpus: Path, cache: Path, **options) -> MultilingualTranslationData:
    options = {"tgt_langs": ["de", "fr"], **options}
    return MultilingualTranslationData(path=str(corpus), splits=SPLITS, vocab_size=400,
                                       max_tokens=512, max_length=64, cache_dir=str(cache),
                                       **options)  # fmt: skip


def test_every_stage_holds_every_direction_with_its_tag(corpus, tmp_path):
    data = make(corpus, tmp_path)
    data.setup("fit")
    tags = target_languages(data.tokenizers)
    assert list(tags) == ["de", "fr"]
    assert data.src_vocab_size == data.tgt_vocab_size == max(tags.values()) + 1
    for stage, n in (("train", 300), ("val", 10), ("test", 8)):
        rows = data.direction_rows(stage)
        assert rows == {"de": range(0, n), "fr": range(n, 2 * n)}
        tokenized = data.datasets[stage]
        assert len(tokenized) == 2 * n
        for lang, where in rows.items():
            part = tokenized.select(where)
            assert {ids[0] for ids in part["src_ids"]} == {tags[lang]}  # tag first
            untagged = [ids[1:] for ids in part["src_ids"]]
            assert untagged == data.tokenizers.encode_source(part["source"])
            assert part["target"] == data.raw()[stage].select(where)["target"]
    batch = next(iter(data.train_dataloader()))
    assert set(batch["src"][:, 0].tolist()) <= set(tags.values())


def test_the_language_assignment_is_part_of_the_cache_key(corpus, tmp_path):
    both, swapped = make(corpus, tmp_path), make(corpus, tmp_path, tgt_langs=["fr", "de"])
    assert both.raw_fingerprint("train") != swapped.raw_fingerprint("train")
    assert both.cache_file("val") != swapped.cache_file("val")


def test_hyperparameters_are_its_own_and_bad_languages_are_refused(corpus, tmp_path):
    data = make(corpus, tmp_path)
    assert data.hparams["tgt_langs"] == ["de", "fr"] and "tgt_lang" not in data.hparams
    for bad, words in (([], "give a list"), (["de", "de"], "each language once"),
                       (["d e"], "language code"), ("de", "give a list")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            make(corpus, tmp_path, tgt_langs=bad)


def test_a_given_tokenizer_keeps_its_tag_ids(corpus, tmp_path, tagged):
    tagged.save(tmp_path / "tok")
    data = make(corpus, tmp_path, tgt_langs=["fr"], tokenizer=str(tmp_path / "tok"))
    assert data.tokenizers.fingerprint() == tagged.fingerprint()  # one direction, same model
    data.setup("test")
    assert {ids[0] for ids in data.datasets["test"]["src_ids"]} == {target_languages(tagged)["fr"]}


# --- a tiny model routed by the tag -------------------------------------------------------------


def train_tagged(tokenizers: Tokenizers, steps: int) -> Translator:
    """A tiny Transformer after `steps` full-batch Adam steps on en→de and en→fr, each source
    led by its target language's tag."""
    torch.manual_seed(0)
    tags = target_languages(tokenizers)
    src, tgt = [], []
    for lang in ("de", "fr"):
        ids = tokenizers.encode_source(WORDS["en"])
        src += tag_sources(ids, [tags[lang]] * len(ids))
        tgt += tokenizers.encode_target(WORDS[lang])
    config = TransformerConfig(src_vocab_size=tokenizers.src_vocab_size,
                               tgt_vocab_size=tokenizers.tgt_vocab_size, d_model=48, n_heads=4,
                               n_encoder_layers=2, n_decoder_layers=2, d_ff=96, dropout=0.0,
                               max_positions=64)  # fmt: skip
    net = build_model(config)
    src, tgt = pad(src), pad(tgt)
    tgt_in = torch.cat([torch.full((len(tgt), 1), BOS), tgt[:, :-1]], dim=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(net(src, tgt_in).transpose(1, 2), tgt, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Translator(net.eval(), tokenizers, DecodingConfig(beam_size=1))


@pytest.fixture(scope="module")
def routed(tagged) -> Translator:
    return train_tagged(tagged, steps=100)


def share_right(hyps: list[str], refs: list[str]) -> float:
    return sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)


def test_the_tag_routes_the_model_to_the_asked_language(routed):
    assert routed.target_languages == ("de", "fr")
    german = routed.translate(WORDS["en"], tgt_lang="de")
    french = routed.translate(WORDS["en"], tgt_lang="fr")
    assert share_right(german, WORDS["de"]) > 0.9
    assert share_right(french, WORDS["fr"]) > 0.9
    assert share_right(french, german) < 0.1
    tags = set(target_languages(routed.tokenizers).values())
    src = pad(tag_sources(routed.tokenizers.encode_source(WORDS["en"]), [min(tags)] * len(NUMBERS)))
    hyps, _ = routed.search(src)
    assert not tags & {t for nbest in hyps for t in nbest[0].tokens}  # tags are never written


def test_the_language_must_be_named_and_exist(routed, single):
    with pytest.raises(ValueError, match="translates into de, fr"):
        routed.translate(["one"])
    with pytest.raises(ValueError, match=r"tgt_lang='it'.*de, fr"):
        routed.translate(["one"], tgt_lang="it")
    with pytest.raises(ValueError, match="one language only"):
        single.translate(["one"], tgt_lang="de")
    assert single.target_languages == ()


def test_save_and_load_keep_the_languages_and_the_outputs(routed, tmp_path):
    routed.save_pretrained(tmp_path / "model")
    loaded = Translator.from_pretrained(tmp_path / "model")
    assert loaded.target_languages == ("de", "fr")
    for lang in ("de", "fr"):
        assert loaded.translate(WORDS["en"], tgt_lang=lang) == routed.translate(
            WORDS["en"], tgt_lang=lang
        )


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(base: Tokenizers) -> Translator:
    """An untrained single-direction model."""
    tokenizers = base
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=tokenizers.src_vocab_size,
                               tgt_vocab_size=tokenizers.tgt_vocab_size, d_model=16, n_heads=2,
                               n_encoder_layers=1, n_decoder_layers=1, d_ff=32)  # fmt: skip
    return Translator(build_model(config).eval(), tokenizers, DecodingConfig(beam_size=1))


def test_translate_tgt_lang_writes_that_language(routed, tmp_path, capsys):
    routed.save_pretrained(tmp_path / "model")
    (tmp_path / "src.txt").write_text("\n".join(WORDS["en"][:5]) + "\n", encoding="utf-8")
    for lang in ("fr", "de"):
        out = tmp_path / f"hyp.{lang}"
        main(["translate", "--model", str(tmp_path / "model"), "--src", str(tmp_path / "src.txt"),
              "--out", str(out), "--tgt-lang", lang])  # fmt: skip
        expected = routed.translate(WORDS["en"][:5], tgt_lang=lang)
        assert out.read_text("utf-8").splitlines() == expected
    assert (tmp_path / "hyp.fr").read_text() != (tmp_path / "hyp.de").read_text()


@pytest.mark.parametrize(
    ("which", "flags", "words"),
    [
        (
            "multi",
            [],
            "--tgt-lang: no tgt_lang given: this multilingual model translates into de, fr",
        ),
        ("multi", ["--tgt-lang", "it"], "--tgt-lang: tgt_lang='it'"),
        (
            "single",
            ["--tgt-lang", "de"],
            "--tgt-lang: tgt_lang='de': this model translates into one",
        ),
    ],
)
def test_translate_tgt_lang_errors(routed, single, tmp_path, capsys, which, flags, words):
    model = {"multi": routed, "single": single}[which]
    model.save_pretrained(tmp_path / which)
    with pytest.raises(SystemExit) as info:
        main(["translate", "--model", str(tmp_path / which), "--src", "-", *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("engine", "extra"), [("ctranslate2", "ctranslate2"), ("onnx", "onnxruntime")]
)
def test_exports_put_the_tag_in_front_as_seqkit_does(routed, tmp_path, capsys, engine, extra):
    """`seqkit export` then `seqkit translate --engine E --tgt-lang L` writes what seqkit's
    own greedy search writes into L; an export is refused a language it does not have."""
    pytest.importorskip(extra)
    routed.save_pretrained(tmp_path / "model")
    main(["export", "--format", engine, str(tmp_path / "model"), str(tmp_path / engine)])
    (tmp_path / "src.txt").write_text("\n".join(WORDS["en"][:8]) + "\n", encoding="utf-8")
    name = {"onnx": "onnxruntime"}.get(engine, engine)
    flags = ["translate", "--engine", name, "--model", str(tmp_path / engine),
             "--src", str(tmp_path / "src.txt"), "--beam", "1"]  # fmt: skip
    for lang in ("de", "fr"):
        out = tmp_path / f"hyp.{lang}"
        main([*flags, "--out", str(out), "--tgt-lang", lang])
        assert out.read_text("utf-8").splitlines() == routed.translate(
            WORDS["en"][:8], tgt_lang=lang
        )
    for asked, words in ([], "translates into de, fr"), (["--tgt-lang", "it"], "tgt_lang='it'"):
        with pytest.raises(SystemExit) as info:
            main([*flags, *asked])
        assert info.value.code == 2 and words in capsys.readouterr().err


def test_serve_takes_tgt_lang(routed):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from seqkit.serve import create_app

    with TestClient(create_app(routed)) as client:
        health = client.get("/health").json()
        assert health["target_languages"] == ["de", "fr"]
        for lang in ("de", "fr"):
            body = {"texts": WORDS["en"][:4], "tgt_lang": lang}
            answer = client.post("/translate", json=body).json()
            assert answer["translations"] == routed.translate(WORDS["en"][:4], tgt_lang=lang)
        refused = client.post("/translate", json={"texts": ["one"]})
        assert refused.status_code == 422
        detail = json.dumps(refused.json())
        assert "tgt_lang" in detail and "de, fr" in detail


def test_fit_with_the_recipe_exports_a_model_that_knows_its_languages(corpus, tmp_path):
    root = Path(__file__).resolve().parents[1]
    main([
        "fit", "--config", str(root / "recipes/transformer-multi30k-multilingual.yaml"),
        "--model.init_args.config.d_model=32", "--model.init_args.config.n_heads=2",
        "--model.init_args.config.n_encoder_layers=1",
        "--model.init_args.config.n_decoder_layers=1",
        "--model.init_args.config.d_ff=64", "--model.init_args.decoding.beam_size=2",
        f"--data.path={corpus}", "--data.splits={train: train, val: val, test: test}",
        "--data.vocab_size=400", "--data.max_tokens=2048", f"--data.cache_dir={tmp_path / 'cache'}",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    model_dir = tmp_path / "lightning_logs/version_0/model"
    translator = Translator.from_pretrained(model_dir)
    assert translator.target_languages == ("de", "fr")
    assert "test/bleu" in (model_dir / "config.json").read_text()
    assert len(translator.translate(["one", "two"], tgt_lang="fr")) == 2
