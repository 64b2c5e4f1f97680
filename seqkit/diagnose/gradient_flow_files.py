"""What `seqkit diagnose gradient-flow` writes: tidy CSVs and, with matplotlib
(`pip install -e ".[plots]"`), PNG plots.

- gradient_flow.csv: model, stage (init | trained), distance T − 1 − t, norm ‖∂L_T/∂h_t‖,
  relative (the norm over the norm at distance 0).
- forget_gates.csv (LSTMs only): model, stage, step t, distance T − 1 − t, forget_gate (the
  mean f_t at step t), product (the mean over units of ∏ f_s for s = t + 1 .. T − 1: the
  share of c_t that reaches the last step along the cell-to-cell path; 1 at the last step).
- models.csv: model, stage, params, loss (mean cross-entropy on the batch), train_seconds.
- gradient_flow.png, forget_gates.png: the same, on log scales where values shrink.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from seqkit.diagnose.gradient_flow import Measurement


def write_measurements(results: list[Measurement], out: Path) -> list[Path]:
    """Write `results` under `out` (made if missing); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "gradient_flow.csv": (("model", "stage", "distance", "norm", "relative"), _flow_rows),
        "forget_gates.csv": (("model", "stage", "step", "distance", "forget_gate", "product"),
                             _gate_rows),
        "models.csv": (("model", "stage", "params", "loss", "train_seconds"), _model_rows),
    }  # fmt: skip
    paths = []
    for name, (columns, rows) in tables.items():
        if name == "forget_gates.csv" and not any(r.gates for r in results):
            continue
        paths.append(out / name)
        with paths[-1].open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(row for r in results for row in rows(r))
    try:
        paths += draw_measurements(results, out)
    except ImportError:
        print('PNG plots need matplotlib (pip install -e ".[plots]"): wrote the numbers only',
              file=sys.stderr)  # fmt: skip
    return paths


def _flow_rows(r: Measurement) -> list[tuple]:
    top = float(r.norms[0])
    return [(r.model, r.stage, d, f"{float(n):.6g}", f"{float(n) / top:.6g}" if top else "nan")
            for d, n in enumerate(r.norms)]  # fmt: skip


def _gate_rows(r: Measurement) -> list[tuple]:
    if r.gates is None:
        return []
    t = len(r.gates.mean)
    return [(r.model, r.stage, step, t - 1 - step, f"{float(r.gates.mean[step]):.6g}",
             f"{float(r.gates.product[t - 1 - step]):.6g}") for step in range(t)]  # fmt: skip


def _model_rows(r: Measurement) -> list[tuple]:
    return [(r.model, r.stage, r.params, f"{r.loss:.4f}", f"{r.seconds:.3g}")]


def draw_measurements(results: list[Measurement], out: Path) -> list[Path]:
    """gradient_flow.png (absolute and relative norms by distance) and, for LSTMs,
    forget_gates.png (f_t by step, ∏ f by distance); init dashed, trained solid.

    Raises:
        ImportError: without matplotlib.
    """
    import matplotlib  # noqa: F401  (fail before any file is written)

    names = list(dict.fromkeys(r.model for r in results))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    paths = [out / "gradient_flow.png"]
    panels = [
        ("‖∂L_T/∂h_t‖", "log", lambda r: (range(len(r.norms)), r.norms)),
        ("‖∂L_T/∂h_t‖ / ‖∂L_T/∂h_T‖", "log",
         lambda r: (range(len(r.norms)), r.norms / r.norms[0])),
    ]  # fmt: skip
    _draw(paths[-1], results, panels, colour, "distance T − t (steps)")
    lstms = [r for r in results if r.gates is not None]
    if lstms:
        paths.append(out / "forget_gates.png")
        panels = [
            ("mean forget gate f_t (top layer)", "linear",
             lambda r: (range(len(r.gates.mean)), r.gates.mean)),
            ("mean ∏ f over the last d steps", "log",
             lambda r: (range(len(r.gates.product)), r.gates.product)),
        ]  # fmt: skip
        _draw(paths[-1], lstms, panels, colour, ("step t", "distance d (steps)"))
    return paths


def _draw(path: Path, results: list[Measurement], panels: list, colour: dict[str, str],
          x_names: str | tuple[str, str]) -> None:  # fmt: skip
    """Panels side by side, one line per result, drawn off-screen by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    x_names = (x_names,) * len(panels) if isinstance(x_names, str) else x_names
    for ax, (title, scale, xy), x_name in zip(fig.subplots(1, len(panels)), panels, x_names,
                                                strict=True):  # fmt: skip
        for r in results:
            x, y = xy(r)
            style = "--" if r.stage == "init" else "-"
            ax.plot(list(x), [float(v) for v in y], style, color=colour[r.model], linewidth=1.4,
                    label=f"{r.model} ({r.stage})")  # fmt: skip
        ax.set_yscale(scale)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_name, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path)
