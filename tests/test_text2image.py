"""Text to image: the patch codebook round trip and its files, the data's pairs (a number's
digits side by side, as codebook tokens), generation (whole cells, shapes, a seed reproduces),
a tiny model that overfits one prompt draws that image, save -> load draws the same, the grid
PNG, bad prompts, and `seqkit generate --out` end to end."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from seqkit.cli import main
from seqkit.codebook import PatchCodebook
from seqkit.data.images import load_digits
from seqkit.data.text2image import TextToImageData, known_words, number_prompt, sample_numbers
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.errors import DataError
from seqkit.image_generator import ImageGenerator, image_grid, prompt_words
from seqkit.models import build_model
from seqkit.models.text2image import OFFSET, ImageTokens, TextToImageConfig
from seqkit.sampling import SamplingConfig
from seqkit.tokens import BOS, EOS

pytestmark = pytest.mark.usefixtures("one_thread")

LANGS = ("en", "de")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits().images[:300]  # uint8 (300, 1, 8, 8)


@pytest.fixture(scope="module")
def codebook(digits) -> PatchCodebook:
    return PatchCodebook.fit(digits, patch_size=2, size=32, seed=0)


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    prompts = [number_prompt(n, lang) for n in range(100) for lang in LANGS]
    return Tokenizers.train(prompts, [], vocab_size=300)


def generator(tokenizers, codebook, seed: int = 0, **sizes) -> ImageGenerator:
    """A small untrained text-to-image model with sharpened outputs, drawing up to 2 cells."""
    torch.manual_seed(seed)
    config = TextToImageConfig(**{"src_vocab_size": tokenizers.src_vocab_size,
                                  "tgt_vocab_size": codebook.num_codes + OFFSET, "d_model": 16,
                                  "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1,
                                  "d_ff": 32, "dropout": 0.0, "max_positions": 40,
                                  "tie_embeddings": False, **sizes})  # fmt: skip
    net = build_model(config).eval()
    with torch.no_grad():
        net.output.weight.mul_(4.0)
    return ImageGenerator(net, tokenizers, codebook, tuple(known_words(2, LANGS)), max_cells=2)


# -- the codebook ---------------------------------------------------------------------------
def test_codebook_round_trip_has_the_shapes_and_a_bounded_error(codebook, digits):
    tokens = codebook.encode(digits)
    assert tokens.shape == (300, 16) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 32
    images = codebook.decode(tokens)
    assert images.shape == (300, 1, 8, 8) and 0 <= float(images.min()) <= float(images.max()) <= 1
    mse, psnr = codebook.reconstruction_error(digits)
    baseline = float(((digits.float() / 255 - digits.float().mean() / 255) ** 2).mean())
    assert mse < 0.02 and mse < baseline / 5 and psnr > 17
    # Each patch's code is its nearest centroid: re-encoding a reconstruction changes nothing.
    assert torch.equal(codebook.encode(images), tokens)


def test_codebook_save_then_load_is_identical_and_bad_files_are_named(codebook, digits, tmp_path):
    codebook.save(tmp_path)
    loaded = PatchCodebook.load(tmp_path)
    assert torch.equal(loaded.centroids, codebook.centroids)
    assert torch.equal(loaded.encode(digits), codebook.encode(digits))
    meta = json.loads((tmp_path / "codebook.json").read_text())
    assert (meta["patch_size"], meta["image_size"], meta["channels"]) == (2, [8, 8], 1)
    save_file({"centroids": torch.zeros(32, 9)}, str(tmp_path / "codebook.safetensors"))
    with pytest.raises(DataError, match=r"codebook\.safetensors: centroids of shape \(32, 9\)"):
        PatchCodebook.load(tmp_path)
    (tmp_path / "codebook.json").write_text(json.dumps({**meta, "patch_size": "2"}))
    with pytest.raises(DataError, match=r"codebook\.json: patch_size='2' is not a positive int"):
        PatchCodebook.load(tmp_path)
    with pytest.raises(ValueError, match=r"this codebook encodes \(B, 1, 8, 8\)"):
        codebook.encode(torch.zeros(2, 1, 8, 16))


# -- the data -------------------------------------------------------------------------------
def test_prompts_name_numbers_in_words_and_numbers_cover_their_digit_counts():
    assert number_prompt(42, "en") == "forty two" and number_prompt(7, "de") == "sieben"
    assert prompt_words("  Forty-Two, ") == ["forty", "two"]
    numbers, digits = sample_numbers(2000, 1, 2, np.random.default_rng(0))
    assert set(n for n in numbers if n < 10) == set(range(10)) and max(numbers) <= 99
    for number, row in zip(numbers, digits.tolist(), strict=True):
        assert "".join(str(d) for d in row if d >= 0) == str(number)


def test_every_number_of_digits_comes_in_every_language():
    data = TextToImageData(n_train=400, n_val=16, n_test=16)
    numbers, _, langs = data.pairs_of("train")
    seen = {(len(str(n)), lang) for n, lang in zip(numbers, langs, strict=True)}
    assert seen == {(1, "en"), (1, "de"), (2, "en"), (2, "de")}
    assert {n for n, lang in zip(numbers, langs, strict=True) if lang == "de"} >= set(range(10))


def test_a_pairs_tokens_are_its_digits_images_side_by_side():
    data = TextToImageData(n_train=64, n_val=16, n_test=16, codebook_size=32, max_tokens=256)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    book = data.codebook
    for i, index in enumerate(batch["index"].tolist()):
        number = batch["number"][i]
        assert batch["src_text"][i] in (number_prompt(number, "en"), number_prompt(number, "de"))
        target = batch["tgt_out"][i][batch["tgt_out"][i] != 0].tolist()
        assert target[-1] == EOS and batch["tgt_in"][i][0] == BOS
        codes = torch.tensor(target[:-1]) - OFFSET
        (image,) = data.images_of("val", [index])  # uint8 (1, 8, 8k)
        assert image.shape[-1] == 8 * len(str(number))
        cells = image.view(1, 8, -1, 8).permute(2, 0, 1, 3)  # (k, 1, 8, 8)
        assert torch.equal(codes, book.encode(cells).flatten())


# -- generation -----------------------------------------------------------------------------
def test_generation_writes_whole_cells_and_a_seed_reproduces(tokenizers, codebook):
    model = generator(tokenizers, codebook)
    config = SamplingConfig(num_samples=4, seed=5)
    drawn = model.generate(["seven", "forty two"], config)
    assert [len(row) for row in drawn] == [4, 4]
    for image in (image for row in drawn for image in row):
        assert image.shape[:2] == (1, 8) and image.shape[2] in (8, 16)
    again = model.generate(["forty two"], config)[0]  # its batch-mates do not matter
    assert all(torch.equal(a, b) for a, b in zip(again, drawn[1], strict=True))
    other = model.generate(["forty two"], replace(config, seed=6))[0]
    assert not all(torch.equal(a, b) for a, b in zip(other, drawn[1], strict=True))


def test_image_tokens_allow_eos_only_after_whole_cells():
    class Flat(torch.nn.Module):  # every token equally likely, EOS too
        def encode(self, src, src_mask):
            return src.float()[..., None]

        def init_state(self, memory, src_mask):
            return {}

        def decode(self, tgt, memory, src_mask, state):
            return torch.zeros(len(tgt), tgt.shape[1], OFFSET + 5), state

        def reorder_state(self, state, index):
            return state

    from seqkit.decoding import search

    decoder = ImageTokens(Flat(), cell_length=3, max_tokens=6)
    src = torch.arange(1, 41)[:, None]
    hyps = search(decoder, src, src > 0, SamplingConfig(seed=0), max_len=7)
    lengths = {len(nbest[0].tokens) for nbest in hyps}
    assert lengths == {3, 6}
    assert all(t >= OFFSET for nbest in hyps for t in nbest[0].tokens)


def test_a_tiny_model_overfits_one_prompt_to_one_image(tokenizers, codebook, digits):
    model = generator(tokenizers, codebook, d_model=32, n_heads=4, d_ff=64)
    codes = codebook.encode(digits[7:8])[0]  # a 7
    src = torch.tensor(tokenizers.encode_source(["seven"]))
    tgt = torch.tensor([[*(codes + OFFSET).tolist(), EOS]])
    tgt_in = torch.cat([torch.tensor([[BOS]]), tgt[:, :-1]], dim=1)
    net = model.net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(net(src, tgt_in).transpose(1, 2), tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = codebook.decode(codes[None])[0]
    for decoding in (DecodingConfig(beam_size=1), SamplingConfig(temperature=0.0)):
        (image,) = model.generate(["seven"], decoding)[0]
        assert torch.equal(image, expected)


def test_save_then_load_draws_the_same_images(tokenizers, codebook, tmp_path):
    model = generator(tokenizers, codebook)
    model.save_pretrained(tmp_path / "model")
    loaded = ImageGenerator.from_pretrained(tmp_path / "model")
    config = SamplingConfig(num_samples=3, seed=1, top_k=5)
    for a, b in zip(model.generate(["drei"], config)[0], loaded.generate(["drei"], config)[0],
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "--out grid.png" in card
    assert "Translator" not in card  # not described as a translation model


UNKNOWN = "prompt 0 'seven sevne': unknown word(s) 'sevne'"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("", "prompt 0: empty"), ("  ,", "prompt 0: empty"), ("seven sevne", UNKNOWN)],
)
def test_bad_prompts_are_refused_by_name(tokenizers, codebook, prompt, message):
    with pytest.raises(DataError, match=re.escape(message)):
        generator(tokenizers, codebook).generate([prompt])


def test_grid_lays_out_cells_with_gaps():
    images = [torch.full((1, 2, 2), 1.0), torch.zeros(1, 2, 4), torch.full((1, 2, 2), 0.5)]
    grid = image_grid(images, columns=2)
    assert grid.shape == (2 * 3 + 1, 2 * 5 + 1) and grid.dtype == np.uint8
    assert grid[1, 1] == 255 and grid[1, 3] == 0 and grid[4, 1] == 128  # 0.5 rounds to 128


# -- seqkit generate --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizers, codebook):
    return generator(tokenizers, codebook).save_pretrained(tmp_path_factory.mktemp("t2i") / "m")


def test_generate_writes_a_png_grid_of_the_right_size(model_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    main(["generate", "--model", str(model_dir), "--prompt", "seven", "--num-samples", "4",
          "--seed", "3", "--out", str(out), "--scale", "3"])  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.load()
        width, height = image.size
    model = ImageGenerator.from_pretrained(model_dir)
    drawn = model.generate(["seven"], SamplingConfig(num_samples=4, seed=3))[0]
    widest = max(image.shape[-1] for image in drawn)
    assert (width, height) == (3 * (2 * (widest + 1) + 1), 3 * (2 * 9 + 1))
    # Two prompts: a row each.
    two = ["--prompt", "eins", "--prompt", "zwei", "--num-samples", "3", "--temperature", "0"]
    main(["generate", "--model", str(model_dir), *two, "--out", str(out), "--scale", "1"])
    with Image.open(out) as image:
        assert image.size[1] == 2 * 9 + 1


@pytest.mark.parametrize(("args", "message"),
                         [(["--prompt", "sevne"], "unknown word(s) 'sevne'"),
                          (["--prompt", ""], "prompt 0: empty")])  # fmt: skip
def test_generate_refuses_bad_prompts_in_one_line(model_dir, tmp_path, args, message):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", str(model_dir), "--out", str(tmp_path / "g.png"), *args])
    text = str(info.value.code)
    assert text.startswith("seqkit generate: ") and message in text and "\n" not in text
    assert not (tmp_path / "g.png").exists()


def test_export_to_ctranslate2_refuses_it_by_its_kind(model_dir, tmp_path):
    pytest.importorskip("ctranslate2")
    from seqkit.export.ctranslate2 import export_ctranslate2

    # Before, it was refused as "not one of TransformerConfig, RNNConfig, ..." (a list of
    # configs CTranslate2 cannot run either).
    with pytest.raises(ValueError, match="holds a transformer-text2image model; CTranslate2 "):
        export_ctranslate2(model_dir, tmp_path / "ct2")
    assert not (tmp_path / "ct2").exists()


def test_generate_needs_out_for_images_and_refuses_it_for_text(model_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", str(model_dir), "--prompt", "seven"])
    assert info.value.code == 2 and "argument --out: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", str(model_dir), "--prompt", "x", "--out", "grid.jpg"])
    assert info.value.code == 2 and "a PNG file name" in capsys.readouterr().err


def test_training_logs_sample_grids_and_exports_a_model_that_draws(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from seqkit.lit.text2image import ImageSamples, TextToImage

    data = TextToImageData(n_train=64, n_val=8, n_test=8, codebook_size=32, max_tokens=512)
    config = TextToImageConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                               d_ff=32, max_positions=40)  # fmt: skip
    module = TextToImage(config, sampling=SamplingConfig(top_k=8))
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger,
                        callbacks=[ImageSamples(prompts=("one", "zwei"), num_samples=3)],
                        enable_progress_bar=False, log_every_n_steps=1,
                        enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, datamodule=data)
    grids = list((tmp_path / "lightning_logs").glob("version_*/samples/*.png"))
    assert len(grids) == 1
    saved = module.generator.save_pretrained(tmp_path / "model")
    loaded = ImageGenerator.from_pretrained(saved)
    assert loaded.sampling.top_k == 8 and loaded.max_cells == 2
    assert loaded.config.tgt_vocab_size == 32 + OFFSET
    (image,) = loaded.generate(["forty two"], SamplingConfig(seed=0))[0]
    assert image.shape[:2] == (1, 8)


def test_a_translator_refuses_a_text_to_image_model_by_name(model_dir):
    from seqkit.translator import Translator

    with pytest.raises(ValueError, match=r"holds a transformer-text2image model \(a text-to-image"):
        Translator.from_pretrained(model_dir)
