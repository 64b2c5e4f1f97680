"""Every recipe parses: its keys and types are checked and its classes instantiate."""

from pathlib import Path

import pytest
import yaml

from seqkit.lit.cli import cli_main

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {"transformer-numbers.yaml", "transformer-multi30k.yaml"} <= {r.name for r in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_recipe_parses_and_instantiates(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(recipe)], run=False)
    written = yaml.safe_load(recipe.read_text())["model"]["init_args"].get("config", {})
    built = cli.model.hparams["config"]
    assert {key: built[key] for key in written} == written  # every value reached the model
    assert "expected" in recipe.read_text().lower()  # each recipe states what it should reach


def test_config_mistakes_are_reported_by_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = str(RECIPES[0])
    with pytest.raises(SystemExit):
        cli_main(["--config", recipe, "--model.init_args.config.d_modle", "8"], run=False)
    assert "d_modle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--config", recipe, "--trainer.max_epochs", "many"], run=False)
    assert "max_epochs" in capsys.readouterr().err
