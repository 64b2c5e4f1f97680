"""README commands work with the base install: a subprocess that cannot import the extras
(dev, serve, plots, bench) runs each user-facing command, as `pip install -e .` leaves it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
# matplotlib (the plots extra) stays: libraries that find it installed import it by metadata.
EXTRAS = ["fastapi", "uvicorn", "httpx", "hypothesis", "vit_pytorch", "einops"]
# Runs `seqkit.cli.main(argv)` with the extras made unimportable, as if never installed.
RUNNER = f"""
import importlib.util, sys
probe = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in {EXTRAS!r} else probe(
    name, *a)
class NoExtras:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
for name in list(sys.modules):
    if name.split(".")[0] in {EXTRAS!r}:
        del sys.modules[name]
sys.meta_path.insert(0, NoExtras())
from seqkit.cli import main
main(sys.argv[1:])
"""


def base(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_translate_evaluate_and_predict_need_no_extra(tmp_path):
    from PIL import Image

    model = str(LEGACY / "transformer")
    result = base("translate", "--model", model, "--beam", "1", "--max-len", "3",
                  stdin="seven\n\nforty-two\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("seven\n")
    ref.write_text("sieben\n")
    result = base("evaluate", "--model", model, "--src", str(src), "--ref", str(ref),
                  "--max-len", "3")  # fmt: skip
    assert result.returncode == 0 and "BLEU" in result.stdout, result.stderr
    for name, size in (("vit", (8, 8)), ("strip-reader", (8, 16))):
        image = tmp_path / f"{name}.png"
        Image.fromarray(np.zeros(size, np.uint8)).save(image)
        result = base("predict", "--model", str(LEGACY / name), str(image))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{image}\t")


@pytest.mark.parametrize("command", ["fit", "export", "average", "serve", "translate"])
def test_every_command_answers_help(command):
    result = base(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_serve_without_its_extra_says_which_to_install():
    result = base("serve", "--model", str(LEGACY / "transformer"))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == 'seqkit serve needs the serve extra: pip install "seqkit[serve]"'
    )
