"""What `seqkit diagnose attention` writes for one `AttentionRecord`: the arrays as .npy, one
tidy CSV, the tokens as JSON and, with matplotlib (`pip install -e ".[plots]"`), PNG heat maps
labelled with the tokens.

In the CSV and the file names, layers, heads and steps count from 1 (step 1 is the query made
from the start-of-sentence token alone); `query` and `key` are 0-based positions, the indices
of the .npy arrays and of tokens.json's lists.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seqkit.diagnose.attention import AttentionRecord

LAYOUT = {
    "encoder_self": "(layer, head, query source position, key source position)",
    "decoder_self": "(step, layer, head, key step); NaN for keys after the step",
    "cross": "(step, layer, head, source position)",
}
"""The axes of each .npy file, as tokens.json states them."""
COLUMNS = ("kind", "layer", "head", "step", "query", "key", "weight", "query_token", "key_token")
MOST_TICKS = 40  # labels an axis shows; beyond that every n-th


def write_record(record: AttentionRecord, out: Path) -> list[Path]:
    """Write `record` under `out` (made if missing): KIND.npy for each kind the model has,
    attention.csv, tokens.json and, with matplotlib, PNG heat maps; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, array in record.arrays().items():
        paths.append(out / f"{kind}.npy")
        np.save(paths[-1], array)
    paths.append(out / "attention.csv")
    with paths[-1].open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(csv_rows(record))
    paths.append(out / "tokens.json")
    tokens = {"text": record.text, "source": record.source, "inputs": record.inputs,
              "outputs": record.outputs,
              "layout": {k: LAYOUT[k] for k in record.arrays()}}  # fmt: skip
    paths[-1].write_text(json.dumps(tokens, ensure_ascii=False, indent=1) + "\n", "utf-8")
    try:
        paths += draw_record(record, out)
    except ImportError:
        print('PNG heat maps need matplotlib (pip install -e ".[plots]"): wrote the numbers only',
              file=sys.stderr)  # fmt: skip
    return paths


def csv_rows(record: AttentionRecord) -> Iterator[tuple]:
    """One row per weight: kind, layer, head, step (empty for the encoder), query position,
    key position, weight, query token, key token. Keys after a decoder step are left out."""
    source, fed = record.source, record.inputs
    for kind, array in record.arrays().items():
        queries, keys = (source, source) if kind == "encoder_self" else (fed, fed)
        keys = source if kind == "cross" else keys
        for index in np.ndindex(array.shape):
            weight = float(array[index])
            if math.isnan(weight):
                continue
            if kind == "encoder_self":
                (layer, head, query, key), step = index, ""
            else:
                step, layer, head, key = index
                query, step = step, step + 1
            yield (kind, layer + 1, head + 1, step, query, key, f"{weight:.6g}",
                   queries[query], keys[key])  # fmt: skip


def draw_record(record: AttentionRecord, out: Path) -> list[Path]:
    """PNG heat maps, one a kind (KIND.png: a row of heads per layer; a decoder map's rows are
    its steps), and cross_step1.png: where the first query looks in every layer and head.

    Raises:
        ImportError: without matplotlib.
    """
    import matplotlib  # noqa: F401  (fail before any file is written)

    fed = [f"{i} → {o}" for i, o in zip(record.inputs, record.outputs, strict=True)]
    axes = {  # kind -> x labels, y labels, x name, y name
        "encoder_self": (record.source, record.source, "key (source)", "query (source)"),
        "decoder_self": (record.inputs, fed, "key (token fed)", "step (fed → written)"),
        "cross": (record.source, fed, "source", "step (fed → written)"),
    }
    paths = []
    for kind, array in record.arrays().items():
        per_head = array if kind == "encoder_self" else np.moveaxis(array, 0, 2)  # (L, H, ., .)
        rows = [[(f"layer {layer} head {head}", grid) for head, grid in enumerate(heads, 1)]
                for layer, heads in enumerate(per_head, 1)]  # fmt: skip
        paths.append(out / f"{kind}.png")
        _draw(paths[-1], f"{kind.replace('_', ' ')} attention", rows, *axes[kind])
    paths.append(out / "cross_step1.png")
    _draw_first_step(record, paths[-1])
    return paths


def _draw_first_step(record: AttentionRecord, path: Path) -> None:
    """Where step 1's query (the start-of-sentence token alone) looks in the source, every
    layer and head: one row each, or for an image one map each laid on the patch grid."""
    first = record.cross[0]  # (L, H, S)
    title = (f"step 1: the query from {record.inputs[0]} alone, which writes "
             f"{record.outputs[0]!r}")  # fmt: skip
    if record.image is None:
        names = [f"layer {layer} head {head}" for layer, head in np.ndindex(first.shape[:2])]
        grid = first.reshape(-1, first.shape[-1])  # (L*H, S)
        _draw(path, title, [[("", grid)]], record.source, names, "source", "")
        return
    per_column, n = record.per_column, sum(label != "<pad>" for label in record.source)
    maps = first[..., :n].reshape(*first.shape[:2], n // per_column, per_column)
    rows = [[(f"layer {layer} head {head}", grid.T) for head, grid in enumerate(heads, 1)]
            for layer, heads in enumerate(maps, 1)]  # fmt: skip
    _draw(path, title, rows, [], [], "patch column", "patch row", image=record.image)


def _draw(
    path: Path,
    title: str,
    rows: list[list[tuple[str, np.ndarray]]],
    x_labels: list[str],
    y_labels: list[str],
    x_name: str,
    y_name: str,
    image: np.ndarray | None = None,
) -> None:
    """A grid of named heat maps on one colour scale from 0, the axes labelled once (left
    column, bottom row) with tokens (every n-th on a long axis); `image` alone in a first row
    when given. Drawn off-screen by Agg: pyplot's state is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_columns = len(rows) + (image is not None), max(map(len, rows))
    t, s = rows[0][0][1].shape
    width, height = min(max(2.0, 0.6 + 0.16 * s), 5.0), min(max(1.5, 0.6 + 0.16 * t), 5.0)
    fig = Figure(figsize=(n_columns * width + 1.5, n_rows * height + 0.8), dpi=100,
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("source", fontsize=9)
    top = max(float(np.nanmax(grid)) for row in rows for _, grid in row)
    for r, row in enumerate(rows, start=n_rows - len(rows)):
        bottom = r == n_rows - 1
        for c, (ax, (name, weights)) in enumerate(zip(axes[r], row, strict=False)):
            ax.set_axis_on()
            shown = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=top, aspect="auto",
                              interpolation="nearest")  # fmt: skip
            ax.set_title(name, fontsize=8)
            _ticks(ax.set_xticks, x_labels if bottom else [], rotation=90)
            _ticks(ax.set_yticks, y_labels if c == 0 else [])
            ax.set_xlabel(x_name if bottom else "", fontsize=8)
            ax.set_ylabel(y_name if c == 0 else "", fontsize=8)
    fig.colorbar(shown, ax=axes, shrink=0.6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def _ticks(set_ticks, labels: list[str], rotation: int = 0) -> None:
    """Every label, or every n-th of a long axis; control characters escaped (a font has no
    glyph for a tab)."""
    every = max(1, math.ceil(len(labels) / MOST_TICKS))
    positions = range(0, len(labels), every)
    shown = [label if label.isprintable() else label.encode("unicode_escape").decode()
             for label in (labels[i] for i in positions)]  # fmt: skip
    set_ticks(positions, shown, fontsize=7, rotation=rotation)
