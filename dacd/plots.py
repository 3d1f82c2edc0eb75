"""Plotly figures and image grids (no gradio import): one helper for each picture."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from .defaults import MEDIUM_BAND

REGION_COLORS = {"easy-to-learn": "#2a9d8f", "ambiguous": "#e9c46a", "hard-to-learn": "#e76f51", "n/a": "#999999"}


def to_pil(image, scale: int = 1) -> Image.Image:
    """uint8 or float [0, 1] image, (C, H, W) or (H, W, C) or (H, W) -> PIL, enlarged with
    nearest-neighbour so pixels stay crisp."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    im = Image.fromarray(a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return im


def image_grid(images, ncols: int, scale: int = 1, pad: int = 2, background: int = 255,
               column_labels=None, row_labels=None) -> Image.Image:
    """Tile images (any form `to_pil` takes) into one grid, row-major; optional text headers
    over the columns and left of the rows (e.g. the requested s and the seed)."""
    from PIL import ImageDraw, ImageFont

    tiles = [to_pil(im, scale) for im in images]
    if not tiles:
        raise ValueError("image_grid needs at least one image")
    w, h = tiles[0].size
    mode = "RGB" if any(t.mode == "RGB" for t in tiles) else "L"
    nrows = int(np.ceil(len(tiles) / ncols))
    font = ImageFont.load_default(size=max(12, min(w // 4, 20)))
    top = (font.size + 8) if column_labels is not None else 0
    left = (font.size * max(len(str(t)) for t in row_labels) * 3 // 5 + 10) if row_labels is not None else 0
    ink, paper = (0, background) if mode == "L" else ((0, 0, 0), (background,) * 3)
    grid = Image.new(mode, (left + ncols * w + (ncols + 1) * pad, top + nrows * h + (nrows + 1) * pad), paper)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid.paste(t.convert(mode), (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(column_labels or []):
        draw.text((left + pad + c * (w + pad) + w / 2, top / 2), str(text), fill=ink, font=font, anchor="mm")
    for r, text in enumerate(row_labels or []):
        draw.text((left - 6, top + pad + r * (h + pad) + h / 2), str(text), fill=ink, font=font, anchor="rm")
    return grid


def difficulty_histogram(table: pd.DataFrame, class_name: str | None = None, bins: int = 20, title: str | None = None):
    """Histogram (density) of s: one class against all classes."""
    import plotly.graph_objects as go

    edges = np.linspace(0, 1, bins + 1)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=table.s, xbins=dict(start=0, end=1, size=1 / bins), histnorm="probability",
                               name="all classes", marker_color="#adb5bd", opacity=0.6))
    if class_name is not None:
        sub = table[table.class_name == class_name]
        fig.add_trace(go.Histogram(x=sub.s, xbins=dict(start=0, end=1, size=1 / bins), histnorm="probability",
                                   name=class_name, marker_color="#e76f51", opacity=0.7))
    fig.update_layout(barmode="overlay", title=title or "How hard are the real images?",
                      xaxis_title="difficulty s = 1 − p(true class)", yaxis_title="share of images (log scale)",
                      margin=dict(l=50, r=10, t=40, b=40), height=340, legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(range=[edges[0], edges[-1]])
    fig.update_yaxes(type="log", dtick=1, tickformat="~%")  # decades only: 100%, 10%, 1%, 0.1%
    return fig


def data_map_figure(table: pd.DataFrame, class_name: str | None = None, max_points: int = 4000, seed: int = 0):
    """Data map: confidence vs variability, coloured by region; hover shows id and s."""
    import plotly.graph_objects as go

    sub = table[table.confidence.notna()]
    if class_name is not None:
        sub = sub[sub.class_name == class_name]
    if len(sub) > max_points:  # keep every rare (non-easy) point, thin out the easy cloud
        easy = sub[sub.region == "easy-to-learn"]
        rest = sub[sub.region != "easy-to-learn"]
        keep = max(0, max_points - len(rest))
        sub = pd.concat([rest, easy.sample(min(keep, len(easy)), random_state=seed)])
    fig = go.Figure()
    for region, color in REGION_COLORS.items():
        r = sub[sub.region == region]
        if not len(r):
            continue
        fig.add_trace(go.Scattergl(
            x=r.variability, y=r.confidence, mode="markers", name=f"{region} ({len(r)})",
            marker=dict(size=5, color=color, opacity=0.7), customdata=np.stack([r.id, r.s, r.pred_name], -1),
            hovertemplate="id %{customdata[0]}<br>s %{customdata[1]:.3f}<br>predicted %{customdata[2]}"
                          "<br>variability %{x:.3f}<br>confidence %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"Data map{': ' + class_name if class_name else ''}",
                      xaxis_title="variability (spread of p(true class) over epochs)",
                      yaxis_title="confidence (mean p(true class))", height=400, margin=dict(l=50, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def measured_histogram(measured, requested: float | None = None, title: str = "Measured difficulty"):
    """Histogram of measured s with the requested value marked."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=list(measured), xbins=dict(start=0, end=1, size=0.05), marker_color="#e76f51",
                                 name="measured s"))
    if requested is not None:
        fig.add_vline(x=requested, line_dash="dash", line_color="#264653", annotation_text=f"requested {requested:.2f}")
    fig.update_layout(title=title, xaxis_title="s measured by the evaluation classifier", yaxis_title="images",
                      xaxis_range=[0, 1], height=300, margin=dict(l=50, r=10, t=40, b=40), showlegend=False)
    fig.update_yaxes(tickformat="d")
    return fig


def sweep_lines(s_values, measured, seeds, baseline_measured=None):
    """Measured s along each sweep row (noise fixed), against the requested s."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for seed, row in zip(seeds, measured):
        fig.add_trace(go.Scatter(x=list(s_values), y=list(row), mode="lines+markers", name=f"seed {seed}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"),
                             name="measured = requested"))
    if baseline_measured is not None:
        fig.add_trace(go.Scatter(x=[0.5] * len(seeds), y=[float(v) for v in baseline_measured], mode="markers",
                                 marker=dict(symbol="x", size=10, color="#264653"),
                                 name="baseline (no dial), same seeds", text=[f"seed {sd}" for sd in seeds],
                                 hovertemplate="baseline, %{text}: measured s %{y:.2f}<extra></extra>"))
    fig.update_layout(title="Measured s along each row", xaxis_title="requested s",
                      yaxis_title="measured s (evaluation classifier)", xaxis_range=[0, 1], yaxis_range=[0, 1],
                      height=380, margin=dict(l=50, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


DISTRIBUTION_COLORS = {"requested": "#adb5bd", "dacd": "#e76f51", "dacd exact": "#f4a261", "baseline": "#2a9d8f",
                       "real": "#264653"}
DISTRIBUTION_NAMES = {"requested": "requested s (the plan)", "dacd": "dacd images, measured",
                      "dacd exact": "dacd images, exact difficulty, measured",
                      "baseline": "baseline images, measured", "real": "real test images, measured"}


def distribution_figure(curves: dict, band=MEDIUM_BAND):
    """One histogram of s per set, stacked on a shared axis: the requested plan, then what each
    set measures (same instrument), with the medium band shaded."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(curves)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[DISTRIBUTION_NAMES.get(n, n) for n in names])
    for i, name in enumerate(names, start=1):
        fig.add_trace(go.Histogram(x=list(curves[name]), xbins=dict(start=0, end=1, size=0.05),
                                   histnorm="probability", name=DISTRIBUTION_NAMES.get(name, name),
                                   marker_color=DISTRIBUTION_COLORS.get(name), showlegend=False), row=i, col=1)
        fig.add_vrect(x0=band[0], x1=band[1], fillcolor="#e9c46a", opacity=0.25, line_width=0, row=i, col=1)
        fig.update_yaxes(title_text="share", tickformat=".0%", row=i, col=1)
    fig.update_xaxes(range=[0, 1])
    fig.update_xaxes(title_text=f"difficulty s (shaded: medium band {band[0]}–{band[1]})", row=len(names), col=1)
    fig.update_layout(title="Asked for vs measured difficulty", height=150 + 130 * len(names),
                      margin=dict(l=55, r=10, t=70, b=50))
    return fig


def calibration_figure(calibration, class_names):
    """Requested -> measured curves per class (from calibration.json)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if calibration is not None:
        for key, ys in calibration.measured.items():
            fig.add_trace(go.Scatter(x=calibration.requested, y=ys, mode="lines+markers",
                                     name=class_names[int(key)]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"), name="y = x"))
    fig.update_layout(title="Calibration curve" + ("" if calibration else " (none in this checkpoint)"),
                      xaxis_title="s given to the model", yaxis_title="mean measured s", height=400,
                      xaxis_range=[0, 1], yaxis_range=[0, 1], margin=dict(l=50, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig
