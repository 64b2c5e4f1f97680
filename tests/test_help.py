"""`seqkit fit` help shows the docstring under every config field (STYLE.md rule 4: the field
docstrings become `--help`), for every registered model config and the dataclasses a
LightningModule takes."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
import typing

import pytest

import seqkit
from seqkit.cli import main
from seqkit.models import ImageModelConfig, ModelConfig

# jsonargparse reads attribute docstrings only when told to: seqkit's CLI tells it
# (`set_parsing_settings` in `cli_main`), so these tests fail without that line.
UNIONS = {"Seq2Seq": ModelConfig, "Classifier": ImageModelConfig}
"""Each LightningModule and the union of configs its `config` takes."""
CONFIGS = [
    pytest.param(module, cls, id=cls.__name__)
    for module, union in UNIONS.items()
    for cls in typing.get_args(union)
]


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass, read from its source."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def squeeze(text: str) -> str:
    """Without whitespace: help wraps lines wherever it likes (after hyphens too)."""
    return "".join(text.split())


def help_text(args: list[str], capsys, monkeypatch) -> str:
    """What `seqkit ARGS` prints before it exits."""
    monkeypatch.setattr(sys, "argv", ["seqkit"])  # LightningCLI warns about pytest's arguments
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(("module", "cls"), CONFIGS)
def test_every_config_field_has_a_docstring(module, cls):
    docs = field_docstrings(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []


@pytest.mark.parametrize(("module", "cls"), CONFIGS)
def test_config_help_shows_every_field_docstring(module, cls, capsys, monkeypatch):
    """`seqkit fit --model Seq2Seq --model.config.help TransformerConfig`: the help that lists
    a config's fields (`fit --help` and `--model.help` only name the config union)."""
    args = ["fit", "--model", module, "--model.config.help", cls.__name__]
    out = squeeze(help_text(args, capsys, monkeypatch))
    assert squeeze(f"--config.{dataclasses.fields(cls)[0].name}") in out
    missing = [name for name, doc in field_docstrings(cls).items() if squeeze(doc) not in out]
    assert missing == [], f"{cls.__name__} fields whose docstring --help leaves out: {missing}"


@pytest.mark.parametrize("module", UNIONS)
def test_model_help_shows_the_docstrings_of_its_option_dataclasses(module, capsys, monkeypatch):
    """`seqkit fit --model.help Seq2Seq` lists the fields of the dataclasses it takes whole
    (optimizer, decoding)."""
    hints = typing.get_type_hints(getattr(seqkit, module).__init__)
    options = [t for t in hints.values() if dataclasses.is_dataclass(t)]
    assert options, f"{module} takes no option dataclass"
    out = squeeze(help_text(["fit", "--model.help", module], capsys, monkeypatch))
    for cls in options:
        missing = [name for name, doc in field_docstrings(cls).items() if squeeze(doc) not in out]
        assert missing == [], f"{cls.__name__} fields whose docstring --help leaves out: {missing}"
