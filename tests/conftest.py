"""Test environment: offline Hugging Face and W&B, set before anything imports them."""

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="seqkit-tests-"))
os.environ.setdefault("HF_HOME", str(_TMP / "hf"))
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_DIR", str(_TMP / "wandb"))
os.environ.setdefault("WANDB_DATA_DIR", str(_TMP / "wandb-data"))  # staged artifacts
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("SEQKIT_CACHE", str(_TMP / "cache"))

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def multi30k() -> Path:
    path = SHARED_DATA / "multi30k"
    if not (path / "train.en.gz").exists():
        pytest.skip(f"Multi30k not found at {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """The module's tests on one torch thread (`tiny_models.one_thread`); a module asks for it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    from tiny_models import one_thread  # here, not at the top: it imports seqkit

    with one_thread():
        yield
