"""Mixing a share of the original data into fine-tuning data, against catastrophic forgetting
(rehearsal / "replay": e.g. Chu et al., 2017, "An Empirical Comparison of Domain Adaptation
Methods for Neural Machine Translation", mixed fine-tuning). `TranslationData(mix_with=PATH,
mix_ratio=r)` uses it on its train stage."""

from __future__ import annotations

import datasets
import numpy as np


def check_mixing(mix_with: str | None, mix_ratio: float) -> None:
    """Raise ValueError, naming the option, unless 0 <= `mix_ratio` < 1 and `mix_with` is
    given exactly when `mix_ratio` > 0."""
    if not 0 <= mix_ratio < 1:  # also refuses NaN
        raise ValueError(f"mix_ratio={mix_ratio}: must be >= 0 and < 1 (the share of "
                         "training pairs drawn from mix_with)")  # fmt: skip
    if mix_ratio > 0 and mix_with is None:
        raise ValueError(f"mix_ratio={mix_ratio} needs mix_with= (the data to mix in)")
    if mix_with is not None and mix_ratio == 0:
        raise ValueError(f"mix_with={mix_with!r} needs mix_ratio > 0 (the share to mix in)")


def mix_rows(n_own: int, n_other: int, ratio: float, seed: int) -> np.ndarray:
    """Rows of the other data to add to `n_own` pairs so that they are `ratio` of the
    whole: round(ratio * n_own / (1 - ratio)) of `n_other`, drawn by `seed` without
    replacement; if more are needed than there are, whole copies and a draw for the rest."""
    n = round(ratio * n_own / (1 - ratio))
    rng = np.random.default_rng(seed)
    copies = np.tile(np.arange(n_other), n // n_other) if n_other else np.arange(0)
    return np.concatenate([copies, rng.choice(n_other, n - len(copies), replace=False)])


def mix_pairs(
    own: datasets.Dataset, other: datasets.Dataset, ratio: float, seed: int
) -> datasets.Dataset:
    """`own` pairs (all, first) and then `mix_rows` of `other`: columns "source", "target"."""
    drawn = other.select(mix_rows(len(own), len(other), ratio, seed))
    columns = ["source", "target"]
    return datasets.concatenate_datasets(
        [own.select_columns(columns), drawn.select_columns(columns)]
    )
