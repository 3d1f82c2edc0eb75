"""Gradio Blocks for the dacd app. Callbacks are thin adapters over `dacd.explore`;
no model code lives here."""

from __future__ import annotations

import functools

import gradio as gr

from .data import DatasetError
from .explore import BROWSE_PERCENTILES, Explorer
from .plots import data_map_figure, difficulty_histogram, to_pil

DISPLAY_SCALE = 5  # 32 px -> 160 px, nearest-neighbour: pixels stay crisp
CSS = ".dacd-gallery img { image-rendering: pixelated; }"
THEME = "soft"


def user_errors(fn):
    """Turn the library's clear errors into a gr.Error the user sees; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, DatasetError, OSError) as e:
            raise gr.Error(str(e)) from e

    return wrapper


def intro(ex: Explorer) -> str:
    return (
        "**dacd — difficulty-aware controlled diffusion.** Explore how hard each class's images are for a "
        "classifier (out-of-fold difficulty `s = 1 − p(true class)`) and what makes them hard. "
        f"Checkpoint: `{ex.checkpoint}`."
    )


# ---------------------------------------------------------------- browse

def browse_tab(ex: Explorer, class_choices: list[str]):
    @user_errors
    def browse(class_name: str):
        r = ex.browse(class_name)
        gallery = [(to_pil(im, DISPLAY_SCALE), cap) for im, cap in zip(r.images, r.captions)]
        return (gallery, difficulty_histogram(ex.scores[ex.scores.split == "train"], class_name),
                data_map_figure(ex.scores, class_name), ex.hardest(class_name))

    @user_errors
    def show_image(image_id: str):
        image_id = (image_id or "").strip()
        row = ex.scores[ex.scores.id == image_id]
        caption = (f"{image_id} · {row.class_name.iloc[0]} · s={row.s.iloc[0]:.3f} · predicted "
                   f"{row.pred_name.iloc[0]} · {row.region.iloc[0]}") if len(row) else image_id
        return to_pil(ex.image(image_id), 8), caption

    def pick(table, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return table.iloc[row]["id"]

    with gr.Tab("Browse real data"):
        gr.Markdown("Real training images of one class from easiest to hardest (percentiles of `s`), the class's "
                    "score histogram against all classes, and its data map. Pick a row of the table, or type an id, "
                    "to see that image.")
        with gr.Row():
            cls = gr.Dropdown(class_choices, value=class_choices[0] if class_choices else None, label="class")
            go_btn = gr.Button("Browse", variant="primary")
        gallery = gr.Gallery(label=f"percentiles {', '.join(map(str, BROWSE_PERCENTILES))} of s", columns=9,
                             height="auto", format="png", object_fit="contain", elem_classes="dacd-gallery")
        with gr.Row():
            hist = gr.Plot(label="difficulty histogram")
            dmap = gr.Plot(label="data map")
        with gr.Row():
            table = gr.Dataframe(label="hardest images of the class", interactive=False, max_height=300)
            with gr.Column():
                image_id = gr.Textbox(label="image id", placeholder="train:123")
                show_btn = gr.Button("Show image")
                shown = gr.Image(label="image", type="pil", format="png", height=256)
                shown_caption = gr.Markdown()
        go_btn.click(browse, cls, [gallery, hist, dmap, table], api_name="browse")
        cls.change(browse, cls, [gallery, hist, dmap, table], api_name=False)
        show_btn.click(show_image, image_id, [shown, shown_caption], api_name="show_image")
        table.select(pick, table, image_id, api_name=False).then(show_image, image_id, [shown, shown_caption],
                                                                 api_name=False)
    return cls, go_btn


# ---------------------------------------------------------------- app

def build_app(ex: Explorer | None = None, max_queue: int = 16, concurrency: int = 1) -> gr.Blocks:
    ex = ex or Explorer()
    try:
        class_choices = ex.class_names
    except (FileNotFoundError, ValueError) as e:  # the app still opens and says what is missing
        class_choices, missing = [], str(e)
    else:
        missing = None
    with gr.Blocks(title="dacd: difficulty-aware controlled diffusion", analytics_enabled=False) as demo:
        gr.Markdown(intro(ex))
        if missing:
            gr.Markdown(f"⚠️ {missing}")
        with gr.Tabs():
            cls, go_btn = browse_tab(ex, class_choices)
        if class_choices:
            demo.load(lambda: None, None, None, api_name=False)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo


def launch_kwargs() -> dict:
    """Gradio 6 takes theme and css at launch()."""
    return {"theme": THEME, "css": CSS}
