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


def image_grid(images, ncols: int, scale: int = 1, pad: int = 2, background: int = 255) -> Image.Image:
    """Tile images (any form `to_pil` takes) into one grid, row-major."""
    tiles = [to_pil(im, scale) for im in images]
    if not tiles:
        raise ValueError("image_grid needs at least one image")
    w, h = tiles[0].size
    mode = "RGB" if any(t.mode == "RGB" for t in tiles) else "L"
    nrows = int(np.ceil(len(tiles) / ncols))
    grid = Image.new(mode, (ncols * w + (ncols + 1) * pad, nrows * h + (nrows + 1) * pad),
                     background if mode == "L" else (background,) * 3)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid.paste(t.convert(mode), (pad + c * (w + pad), pad + r * (h + pad)))
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
    fig.update_layout(barmode="overlay", title=title or "difficulty s = 1 − p(true class)",
                      xaxis_title="s", yaxis_title="share of images", yaxis_type="log",
                      margin=dict(l=40, r=10, t=40, b=40), height=320, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(range=[edges[0], edges[-1]])
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
    fig.update_layout(title=f"data map{': ' + class_name if class_name else ''}", xaxis_title="variability",
                      yaxis_title="confidence", height=380, margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def measured_histogram(measured, requested: float | None = None, title: str = "measured difficulty"):
    """Histogram of measured s with the requested value marked."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=list(measured), xbins=dict(start=0, end=1, size=0.05), marker_color="#e76f51",
                                 name="measured s"))
    if requested is not None:
        fig.add_vline(x=requested, line_dash="dash", line_color="#264653", annotation_text=f"requested {requested:.2f}")
    fig.update_layout(title=title, xaxis_title="s measured by the evaluation classifier", yaxis_title="images",
                      xaxis_range=[0, 1], height=300, margin=dict(l=40, r=10, t=40, b=40))
    return fig


def sweep_lines(s_values, measured, seeds, baseline_measured=None):
    """Measured s along each sweep row (noise fixed), against the requested s."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for seed, row in zip(seeds, measured):
        fig.add_trace(go.Scatter(x=list(s_values), y=list(row), mode="lines+markers", name=f"seed {seed}"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"), name="y = x"))
    if baseline_measured is not None:
        for seed, v in zip(seeds, baseline_measured):
            fig.add_trace(go.Scatter(x=[0.5], y=[float(v)], mode="markers", marker_symbol="x", marker_size=10,
                                     name=f"baseline, seed {seed}", showlegend=False))
    fig.update_layout(title="does the sweep get harder? measured s per row", xaxis_title="requested s",
                      yaxis_title="measured s", xaxis_range=[0, 1], yaxis_range=[0, 1], height=360,
                      margin=dict(l=40, r=10, t=40, b=40))
    return fig


def distribution_figure(curves: dict, band=MEDIUM_BAND):
    """Overlaid histograms of s: requested and each measured set (same instrument)."""
    import plotly.graph_objects as go

    colors = {"requested": "#adb5bd", "dacd": "#e76f51", "baseline": "#2a9d8f", "real": "#264653"}
    fig = go.Figure()
    for name, values in curves.items():
        fig.add_trace(go.Histogram(x=list(values), xbins=dict(start=0, end=1, size=0.05), histnorm="probability",
                                   name=name, opacity=0.55, marker_color=colors.get(name)))
    fig.add_vrect(x0=band[0], x1=band[1], fillcolor="#e9c46a", opacity=0.15, line_width=0,
                  annotation_text="medium band")
    fig.update_layout(barmode="overlay", title="requested vs measured difficulty", xaxis_title="s",
                      yaxis_title="share of images", xaxis_range=[0, 1], height=380, margin=dict(l=40, r=10, t=40, b=40))
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
    fig.update_layout(title="calibration: requested → measured s" + ("" if calibration else " (none in checkpoint)"),
                      xaxis_title="requested s", yaxis_title="mean measured s", height=380,
                      xaxis_range=[0, 1], yaxis_range=[0, 1], margin=dict(l=40, r=10, t=40, b=40))
    return fig
