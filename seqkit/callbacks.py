"""Callbacks that make training measurable and let a person see what the model does; and
`AverageCheckpoints` (defined with the rest of checkpoint averaging, in `seqkit.average`)."""

from __future__ import annotations

import csv
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from seqkit.average import AverageCheckpoints
from seqkit.data.batching import pad
from seqkit.tokens import BOS, EOS, PAD, token_labels

__all__ = ["AttentionMaps", "AverageCheckpoints", "TokensPerSecond", "TranslationSamples"]


class TokensPerSecond(L.Callback):
    """Logs training throughput in real (non-padding) source + target tokens (or image patches)
    per second; for a language model, the tokens it predicts.

    `train/tokens_per_sec` covers the steps since the last log; at the end of fitting the
    run's totals are printed, so that benchmarks and users read one comparable figure, with
    the rows per second: sentence pairs, or a language model's windows.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.sequences = 0
        self.rows = "pairs"  # what a batch's rows are
        self.seconds = 0.0
        self._window_tokens = 0
        self._window_start = 0.0
        self._step_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()
        if not self._window_start:
            self._window_start = self._step_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if "target" in batch:  # a language model's window: the tokens it predicts
            tokens, rows = int((batch["target"] != PAD).sum()), len(batch["target"])
            self.rows = "windows"
        else:
            src_mask = batch.get("src_mask")  # image patches come with theirs
            src_tokens = (batch["src"] != PAD).sum() if src_mask is None else src_mask.sum()
            tokens = int(src_tokens + (batch["tgt_out"] != PAD).sum())
            rows = len(batch["tgt_out"])
        self.tokens += tokens
        self.sequences += rows
        self.seconds += now - self._step_start
        self._window_tokens += tokens
        if trainer.global_step % trainer.log_every_n_steps == 0:
            rate = self._window_tokens / max(now - self._window_start, 1e-9)
            pl_module.log("train/tokens_per_sec", rate * trainer.world_size)
            self._window_tokens, self._window_start = 0, now

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.seconds:
            rate = self.tokens / self.seconds * trainer.world_size
            pairs = self.sequences / self.seconds * trainer.world_size
            print(
                f"trained on {self.tokens * trainer.world_size:,} tokens in "
                f"{self.seconds:.0f} s of steps: {rate:,.0f} tokens/s, {pairs:,.1f} "
                f"{self.rows}/s"
            )


class _ValidationSamples(L.Callback):
    """Holds `n` fixed validation sentences (or images, for a model with an image source),
    those with the lowest dataset indices: the same every epoch whatever the batch order, and
    drawn from the whole split rather than from the shortest sentences that come first in
    length-sorted batches. Rank 0 keeps and logs them; the sanity check is skipped."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n = n
        # index: (src ids, source text, reference), or for images (patches (N, P), None, ref)
        self._rows: dict[int, tuple[list[int] | Tensor, str | None, str]] = {}
        self._warned: set[str] = set()

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.is_global_zero and not trainer.sanity_checking and bool(trainer.loggers)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._rows = {}

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not self._active(trainer) or dataloader_idx or batch.get("repeat"):
            return
        src, src_mask = batch["src"], batch.get("src_mask")  # image patches come with a mask
        for i, index in enumerate(batch["index"].tolist()):
            if len(self._rows) < self.n or index < max(self._rows):
                if src_mask is None:
                    row = (src[i][src[i] != PAD].tolist(), batch["src_text"][i])
                else:
                    row = (src[i][src_mask[i]].cpu(), None)
                self._rows[index] = (*row, batch["tgt_text"][i])
                if len(self._rows) > self.n:
                    del self._rows[max(self._rows)]

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or not self._rows:
            return
        rows = [self._rows[i] for i in sorted(self._rows)]
        sources, references = [r[1] for r in rows], [r[2] for r in rows]
        if sources[0] is None:  # image patches: show the images they were cut from
            src = pad_sequence([r[0] for r in rows], batch_first=True)  # (B, N, P)
            src_mask = torch.arange(src.shape[1]) < torch.tensor([len(r[0]) for r in rows])[:, None]
            sources = [pl_module.image_source.restore(r[0]) for r in rows]
        else:
            src = pad([ids for ids, _, _ in rows])
            src_mask = src != PAD
        device = pl_module.device
        self.log_samples(
            trainer, pl_module, src.to(device), src_mask.to(device), sources, references
        )

    def log_samples(
        self,
        trainer,
        pl_module,
        src: Tensor,
        src_mask: Tensor,
        sources: list[str] | list[np.ndarray],
        references: list[str],
    ) -> None:
        """Decode the padded sources (B, S) or image patches (B, S, P) and log what the
        subclass shows; `sources` are texts, or RGB images (H, W, 3) uint8."""
        raise NotImplementedError

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            rank_zero_warn(f"{type(self).__name__}: {message}")


class TranslationSamples(_ValidationSamples):
    """After every validation, logs `n` fixed validation sentences with their greedy
    translations: a `wandb.Table` under `val/samples` for W&B, a Markdown table for
    TensorBoard, and rows appended to `samples.tsv` in the log directory of any other logger
    that has one (CSVLogger). Columns: epoch, step, source, reference, hypothesis.

    For a model that reads images the source is the image: a `wandb.Image` in the table (which
    needs pillow), `add_image` under `val/samples/i` beside TensorBoard's table, and a PNG file
    in `samples/` under the log directory, named in the TSV's source column.
    """

    KEY = "val/samples"
    COLUMNS = ("epoch", "step", "source", "reference", "hypothesis")

    def __init__(self, n: int = 8) -> None:
        super().__init__(n)

    def log_samples(self, trainer, pl_module, src, src_mask, sources, references) -> None:
        greedy = pl_module.decoding.as_greedy()  # as validation decodes
        hyps = [t.text for t in pl_module.translator.generate(src, src_mask, greedy)]
        epoch, step = trainer.current_epoch, trainer.global_step
        images = isinstance(sources[0], np.ndarray)
        for logger in trainer.loggers:
            shown = self._show_images(logger, sources, epoch, step) if images else sources
            rows = [[epoch, step, *row] for row in zip(shown, references, hyps, strict=True)]
            if isinstance(logger, WandbLogger):
                logger.log_table(self.KEY, columns=list(self.COLUMNS), data=rows, step=step)
            elif isinstance(logger, TensorBoardLogger):
                table = _markdown_table(self.COLUMNS[2:], [row[2:] for row in rows])
                logger.experiment.add_text(self.KEY, table, step)
            elif getattr(logger, "log_dir", None):
                _append_tsv(Path(logger.log_dir) / "samples.tsv", self.COLUMNS, rows)

    def _show_images(self, logger, images: list[np.ndarray], epoch: int, step: int) -> list:
        """The source column for images: logs or writes them where `logger` keeps images."""
        if isinstance(logger, WandbLogger):
            if importlib.util.find_spec("PIL") is None:
                self._warn(
                    "wandb.Image needs pillow (`pip install pillow`); no images in the table"
                )
                return ["(image)"] * len(images)
            import wandb

            return [wandb.Image(image) for image in images]
        names = [f"{self.KEY}/{i}" for i in range(len(images))]
        if isinstance(logger, TensorBoardLogger):
            for name, image in zip(names, images, strict=True):
                logger.experiment.add_image(name, image, step, dataformats="HWC")
        elif getattr(logger, "log_dir", None):
            names = [f"samples/epoch={epoch}-step={step}-{i}.png" for i in range(len(images))]
            _write_pngs(Path(logger.log_dir), names, images)
        return names


class AttentionMaps(_ValidationSamples):
    """After every validation, draws the model's attention over the source while it writes its
    greedy translation of `n` fixed validation sentences (`net.cross_attention`: for the
    Transformer the last decoder layer's, averaged over heads). Logs `wandb.Image`s under
    `val/attention` for W&B (which needs pillow), `add_image` for TensorBoard, and PNG files
    in `attention/` under the log directory of any other logger that has one.

    With matplotlib installed the maps carry token labels; without it they are plain
    grayscale grids of 8 pixels a token, brighter for more attention. For a model that reads
    images, each column of the map is a column of patches, left to right: the map shows where
    in the image each output token looked.
    """

    KEY = "val/attention"

    def __init__(self, n: int = 2) -> None:
        super().__init__(n)

    def log_samples(self, trainer, pl_module, src, src_mask, sources, references) -> None:
        maps = self._render(pl_module, src, src_mask, sources, references)
        if maps is None:
            return
        images, captions = maps
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                if importlib.util.find_spec("PIL") is None:
                    self._warn("wandb.Image needs pillow (`pip install matplotlib` brings it)")
                    continue
                logger.log_image(self.KEY, images, step=step, caption=captions)
            elif isinstance(logger, TensorBoardLogger):
                for i, image in enumerate(images):
                    logger.experiment.add_image(f"{self.KEY}/{i}", image, step, dataformats="HWC")
            elif getattr(logger, "log_dir", None):
                names = [
                    f"epoch={trainer.current_epoch}-step={step}-{i}.png" for i in range(len(images))
                ]
                _write_pngs(Path(logger.log_dir) / "attention", names, images)

    def _render(
        self, pl_module, src: Tensor, src_mask: Tensor, sources: list, references: list[str]
    ) -> tuple[list[np.ndarray], list[str]] | None:
        """RGB heat maps and captions, or None (with a warning) for a model without attention."""
        translator = pl_module.translator
        nbest, limits = translator.search(src, src_mask, translator.decoding.as_greedy())
        hyps = [n[0].tokens for n in nbest]
        # The tokens predicted: EOS too, unless the hypothesis ran into its limit.
        outputs = [
            [*h, EOS] if len(h) < n else h for h, n in zip(hyps, limits.tolist(), strict=True)
        ]
        tgt = pad([[BOS, *out[:-1]] for out in outputs]).to(src.device)
        try:
            weights = (
                translator.net.cross_attention(src, src_mask, tgt).detach().float().cpu().numpy()
            )
        except ValueError as err:
            self._warn(f"{err}; no attention maps are logged")
            return None
        tokenizers, source = translator.tokenizers, translator.image_source
        images, captions = [], []
        for i, (out, text) in enumerate(zip(outputs, tokenizers.decode_target(hyps), strict=True)):
            tgt_labels = token_labels(tokenizers.target, out)
            n = int(src_mask[i].sum())
            grid = weights[i, : len(tgt_labels), :n]
            if source is not None:  # sum each column of patches (they run top to bottom)
                per_column = source.per_column
                grid = grid.reshape(len(tgt_labels), n // per_column, per_column).sum(-1)
                columns = [str(c) for c in range(grid.shape[1])]
                images.append(render_attention(grid, columns, tgt_labels, "patch column"))
                captions.append(f"image of {references[i]} → {text}")
            else:
                src_labels = token_labels(tokenizers.source, src[i][:n].tolist())
                images.append(render_attention(grid, src_labels, tgt_labels))
                captions.append(f"{sources[i]} → {text}")
        return images, captions


def render_attention(
    weights: np.ndarray, src_labels: list[str], tgt_labels: list[str], src_name: str = "source"
) -> np.ndarray:
    """An RGB heat map (H, W, 3) uint8 of `weights` (T, S): one row per output token, one
    column per source token (the x axis is named `src_name`). Labelled axes with matplotlib
    (drawn off-screen by Agg, leaving pyplot's state alone), a plain grayscale grid without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        cells = np.kron(weights / max(float(weights.max()), 1e-9), np.ones((8, 8)))
        return np.repeat((255 * cells).round().astype(np.uint8)[..., None], 3, axis=-1)
    t, s = weights.shape
    fig = Figure(figsize=(1.5 + 0.3 * max(s, 6), 1.2 + 0.3 * max(t, 6)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(s), src_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(t), tgt_labels, fontsize=8)
    ax.set_xlabel(src_name)
    ax.set_ylabel("output")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _write_pngs(folder: Path, names: list[str], images: list[np.ndarray]) -> None:
    from PIL import Image

    for name, image in zip(names, images, strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """TensorBoard renders text summaries as Markdown."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


def _append_tsv(path: Path, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        if new:
            writer.writerow(columns)
        writer.writerows(rows)
