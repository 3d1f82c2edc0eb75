"""Gradio Blocks for the dacd app. Callbacks are thin adapters over `dacd.explore`;
no model code lives here."""

from __future__ import annotations

import functools
import inspect
import random
import tempfile
import zipfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import gradio as gr
import torch

from .calibration import Calibration
from .data import DatasetError, load_image, resolve_class
from .defaults import (
    APP_LIMITS,
    DIFFICULTY,
    EDIT_STRENGTH,
    LAYOUT,
    MAX_SEED,
    PROMPT_TEMPLATE,
    REPO_ROOT,
    SAMPLING,
)
from .explore import (
    BROWSE_PERCENTILES,
    DEFAULT_VIEW,
    DISTRIBUTION_SETS,
    EDIT_LEVELS,
    EXACT,
    NEAR_MIN_COUNT,
    NEAR_WIDTH,
    Explorer,
    Workbench,
    cpu_cores,
)
from .plots import (
    calibration_figure,
    data_map_figure,
    difficulty_histogram,
    distribution_figure,
    image_grid,
    measured_histogram,
    sweep_lines,
    to_pil,
)

try:  # ZeroGPU on Hugging Face Spaces; a no-op elsewhere
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)

DISPLAY_SCALE = 5  # 32 px -> 160 px, nearest-neighbour: pixels stay crisp
THEME = "soft"
# Galleries: thumbnails of at least 144 px in as many columns as fit, each caption under its image
# in full (wrapped, never cut or over the image), room above for the gallery's label, no reserved
# blank height. On a phone the sweep grid keeps 680 px and scrolls sideways: squeezed to the
# screen its 8 columns of headers could not be read.
CSS = """
.dacd-gallery img { image-rendering: pixelated; }
.dacd-gallery .grid-wrap { overflow: visible !important; height: auto !important; max-height: none !important;
  padding-top: 2.4em !important; }
.dacd-gallery .fixed-height { min-height: 0 !important; max-height: none !important; }
.dacd-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(144px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; }
.dacd-gallery .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column; overflow: visible !important; }
.dacd-gallery .thumbnail-item img { aspect-ratio: 1 / 1; width: 100% !important; height: auto !important;
  min-width: 128px; }
.dacd-gallery .caption-label { position: static !important; max-width: none !important; width: auto;
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; opacity: 1 !important;
  border: none !important; border-radius: 0 !important; line-height: 1.3; overflow-wrap: anywhere; }
.dacd-note { font-size: 0.95em; }
@media (max-width: 720px) {
  #sweep-grid .image-container { overflow-x: auto !important; }
  #sweep-grid .image-container button { justify-content: flex-start !important; }
  #sweep-grid .image-frame { justify-content: flex-start !important; width: max-content !important; }
  #sweep-grid .image-frame img { width: 680px !important; max-width: none !important; height: auto !important; }
}
"""


# Folders whose absolute path a message should not show to app users (the server's layout): set
# by build_app to the checkpoint's parent and the repository; a path under one is shown from there.
_PRIVATE_ROOTS: list[str] = []


def redact(text: str) -> str:
    """`text` with the server's private folders cut from its paths ("/srv/app/checkpoints/x/dacd"
    -> "checkpoints/x/dacd" when /srv/app is private)."""
    for root in sorted(_PRIVATE_ROOTS, key=len, reverse=True):
        text = text.replace(root.rstrip("/") + "/", "")
    return text


def sentence(text: str) -> str:
    """An error as a sentence: capital first letter, final full stop, no wrapping quotes, no
    private server paths (`redact`)."""
    text = redact(str(text)).strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # a message wrapped in quotes
        text = text[1:-1].strip()
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


class _Limited:
    """A numeric control bounded by an `APP_LIMITS` entry (`limit`, set by `Slider`/`Number`): a
    value sent through the API outside it is refused while the event is processed (so
    gradio_client receives the reason) with the same sentence the library uses. (Gradio builds a
    component's config from its __init__ signature, so these classes keep Gradio's __init__.)"""

    limit = None

    def preprocess(self, payload):
        if payload is None:
            return None
        try:
            return self.limit.check(payload)
        except ValueError as e:
            raise gr.Error(sentence(str(e))) from None

    def api_info(self) -> dict:
        kind = "integer" if self.limit.integer else "number"
        return {"type": kind, "description": sentence(f"{self.limit.label}: {self.limit.describe()}")}


class LimitedSlider(_Limited, gr.Slider):
    def get_block_name(self) -> str:  # rendered by Gradio's own slider
        return "slider"


class LimitedNumber(_Limited, gr.Number):
    def get_block_name(self) -> str:
        return "number"


def _bounded(cls, limit: str, **kwargs):
    lim = APP_LIMITS[limit]
    control = cls(minimum=lim.lo, maximum=lim.hi, **kwargs)
    control.limit = lim
    return control


def Slider(limit: str, **kwargs) -> LimitedSlider:  # noqa: N802 - reads like the component it builds
    """A slider spanning `APP_LIMITS[limit]`, refusing anything else through the API."""
    return _bounded(LimitedSlider, limit, **kwargs)


def Number(limit: str, **kwargs) -> LimitedNumber:  # noqa: N802
    """A number box spanning `APP_LIMITS[limit]`, refusing anything else through the API."""
    return _bounded(LimitedNumber, limit, **kwargs)


class ClassDropdown(gr.Dropdown):
    """The class picker (built by `ClassBox`): a fixed list in the page (no free typing), while
    API clients may send a class name in any case or its number; unknown classes are refused with
    the list of classes."""

    class_names: list = []
    extra: tuple = ()

    def get_block_name(self) -> str:
        return "dropdown"

    def preprocess(self, payload):
        if payload is None or payload in self.extra or payload in self.class_names:
            return payload
        try:
            return self.class_names[resolve_class(payload, self.class_names)]
        except ValueError as e:
            raise gr.Error(sentence(str(e))) from None

    def api_info(self) -> dict:
        also = f", {', '.join(map(repr, self.extra))}" if self.extra else ""
        return {"type": "string", "description": f"a class name ({', '.join(self.class_names)}{also}) or its number"}


class ImageUpload(gr.Image):
    """An image upload that refuses, in a sentence the API client receives, a file that is not an
    image or is over 10 MB (Gradio's own Image fails there with an error clients cannot read)."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is None:
            return None
        name = getattr(payload, "orig_name", None) or "the upload"
        try:
            path = super().preprocess(payload)
            if path is not None:
                load_image(path)  # size and readability, the library's check
            return path
        except gr.Error:
            raise
        except Exception as e:
            text = str(e) if isinstance(e, ValueError) else f"{name} cannot be read as an image ({type(e).__name__})"
            raise gr.Error(sentence(text + ". Upload a PNG or JPEG of at most 10 MB")) from None


def ClassBox(choices, class_names, extra=(), **kwargs) -> ClassDropdown:  # noqa: N802
    box = ClassDropdown(choices, allow_custom_value=False, filterable=False, **kwargs)
    box.class_names, box.extra = list(class_names), tuple(extra)
    return box


# ---------------------------------------------------------------- an event's inputs, by name

def limited(limit: str):
    """A field of an event's inputs bounded by `APP_LIMITS[limit]` (its control is built with it)."""
    return field(metadata={"limit": limit})


def in_order(inputs_cls, **controls) -> list:
    """The event's input components, in the order of `inputs_cls`'s fields (one control per field)."""
    names = [f.name for f in fields(inputs_cls)]
    if set(controls) != set(names):
        raise TypeError(f"{inputs_cls.__name__} takes controls {names}, got {list(controls)}")
    return [controls[n] for n in names]


def takes(inputs_cls):
    """Let a callback take one `inputs_cls` (a dataclass, one field per input component, in the
    event's order) instead of one positional argument per control. Gradio names the API's
    parameters after the callback's signature, so the wrapper's signature is the dataclass's
    fields followed by the callback's own remaining parameters (e.g. `progress`)."""
    names = [f.name for f in fields(inputs_cls)]
    # a field's default (None for an optional image) makes the API parameter optional: Gradio reads
    # defaults from the signature where the component has no initial value
    defaults = {f.name: f.default for f in fields(inputs_cls) if f.default is not MISSING}

    def decorate(fn):
        own = list(inspect.signature(fn).parameters.values())[1:]
        signature = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               default=defaults.get(n, inspect.Parameter.empty)) for n in names] + own)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            rest = {k: v for k, v in given.items() if k not in names}
            return fn(inputs_cls(**{n: given[n] for n in names}), **rest)

        wrapper.__signature__ = signature
        return wrapper

    return decorate


def user_errors(fn):
    """The library's clear errors reach the user (a toast in the page, the exception's text in
    gradio_client) as sentences; the app keeps serving. Handlers check their inputs before any
    work, so a refusal is immediate."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, DatasetError, OSError) as e:
            raise gr.Error(sentence(str(e))) from e

    return wrapper


def note(text: str):
    """A tab's plain-words "what am I looking at"."""
    return gr.Markdown(text, elem_classes="dacd-note")


def intro(ex: Explorer) -> str:
    device = ex.device() if hasattr(ex, "device") else "cpu"
    return (
        "## dacd: difficulty-aware controlled diffusion\n"
        "Make training images of a class at a chosen **difficulty** `s = 1 − p(true class)`: `s` near 0 is an item a "
        "classifier finds easy, near 1 one it finds hard. Every generated image is then *measured* by a separate "
        "evaluation classifier, so you can see whether the dial did what was asked. "
        f"Checkpoint: **{ex.name}** · device: {device}."
    )


# ---------------------------------------------------------------- browse

@dataclass
class EditInputs:
    """"Make harder / easier" of the Real data tab, in the /edit API's parameter order."""

    image_id: str
    strength: float = limited("strength")
    seed: int = limited("seed")


def edit_gallery(r: dict, class_names) -> list:
    """The item (its own s) and its edits, each captioned with requested and measured s."""
    own = f"s={r['source_s']:.2f} (scoring) · " if r.get("source_s") is not None else ""
    items = [(to_pil(r["source"], DISPLAY_SCALE),
              f"{r['source_id']} · {class_names[r['label']]} · {own}measured s={r['source_measured']:.2f} · "
              f"predicted {r['source_predicted']}")]
    for lev, im, m, p in zip(r["levels"], r["images"], r["measured"], r["predicted"]):
        items.append((to_pil(im, DISPLAY_SCALE), f"requested s={lev:.2f} · measured s={m:.2f} · predicted {p} · "
                                                  f"strength {r['strength']:g} · seed {r['seed']}"))
    return items


def browse_tab(ex: Workbench, class_names: list[str]) -> None:
    @user_errors
    def browse(class_name: str):
        r = ex.browse(class_name)
        gallery = [(to_pil(im, DISPLAY_SCALE), cap) for im, cap in zip(r.images, r.captions)]
        table = ex.hardest(class_name)
        numbers = table.select_dtypes("number").columns
        table[numbers] = table[numbers].astype(float).round(3)  # float32 would show 0.8999999761581421
        return (gallery, difficulty_histogram(ex.scores[ex.scores.split == "train"], class_name),
                data_map_figure(ex.scores, class_name), table)

    @user_errors
    def show_image(image_id: str):
        image_id = (image_id or "").strip()
        if not image_id:
            raise ValueError("Give an image id such as train:123 (pick a row of the table, or type one)")
        image = ex.image(image_id)
        row = ex.scores[ex.scores.id == image_id]
        caption = (f"**{image_id}** · {row.class_name.iloc[0]} · s = {row.s.iloc[0]:.3f} · predicted "
                   f"{row.pred_name.iloc[0]} · {row.region.iloc[0]}") if len(row) else f"**{image_id}** (no score)"
        return to_pil(image, 8), caption

    def pick(table, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return table.iloc[row]["id"]

    @user_errors
    @gpu
    @takes(EditInputs)
    def edit(x: EditInputs, progress=gr.Progress()):
        image_id = (x.image_id or "").strip()
        if not image_id:
            raise ValueError("Give an image id such as train:123 (pick a row of the table, or type one)")
        r = ex.edits(image_id, strength=x.strength, seed=x.seed, progress=lambda f, d: progress(f, desc=d))
        return edit_gallery(r, class_names)

    with gr.Tab("Real data", id="browse"):
        note("**What am I looking at?** Real training images of one class, from the easiest (`p0`, the classifier is "
             "sure) to the hardest (`p100`, the classifier thinks it is another class), with each image's `s` and "
             "what the scoring classifier predicted. The histogram shows how the class's difficulty compares with "
             "all classes. The **data map** plots each image by *confidence* (the classifier's mean probability for "
             "the true class during training) against *variability* (how much that probability moved between "
             "epochs): *easy-to-learn* images are confident and stable, *hard-to-learn* ones stay unlikely, "
             "*ambiguous* ones swing. Pick a row of the table to see an image.")
        with gr.Row():
            cls = ClassBox(class_names, class_names, value=class_names[0] if class_names else None, label="class",
                           scale=3)
            go_btn = gr.Button("Browse", variant="primary", elem_id="browse-button", scale=1)
        gallery = gr.Gallery(label=f"percentiles {', '.join(map(str, BROWSE_PERCENTILES))} of s (easy → hard)",
                             height="auto", format="png", object_fit="contain", elem_classes="dacd-gallery",
                             elem_id="browse-gallery", allow_preview=False)
        with gr.Row():
            hist = gr.Plot(label="difficulty histogram", min_width=320)
            dmap = gr.Plot(label="data map", min_width=320)
        with gr.Row():
            table = gr.Dataframe(label="hardest images of the class", interactive=False, max_height=320,
                                 min_width=320)
            with gr.Column(min_width=320):
                image_id = gr.Textbox(label="image id", placeholder="train:123", elem_id="image-id")
                show_btn = gr.Button("Show image")
                shown = gr.Image(label="image", type="pil", format="png", height=256)
                shown_caption = gr.Markdown(label="image details")
        with gr.Group():
            gr.Markdown("**Make this item harder or easier.** The image whose id is in the box above, edited "
                        "towards requested `s` = "
                        f"{', '.join(f'{v:g}' for v in EDIT_LEVELS)} from one noise (img2img at *strength*: the "
                        "share of the denoising that is redone; higher moves further from the item). Each edit is "
                        "measured by the evaluation classifier.", elem_classes="dacd-note")
            with gr.Row():
                strength = Slider("strength", value=EDIT_STRENGTH, step=0.05, label="strength", min_width=160)
                edit_seed = Number("seed", value=0, precision=0, label="seed", min_width=120)
                edit_btn = gr.Button("Make harder / easier", elem_id="edit-button", min_width=160)
            edits = gr.Gallery(label="the item, then its edits from easy to hard", height="auto", format="png",
                               object_fit="contain", elem_classes="dacd-gallery", elem_id="edit-gallery",
                               allow_preview=False)
        go_btn.click(browse, cls, [gallery, hist, dmap, table], api_name="browse")
        cls.change(browse, cls, [gallery, hist, dmap, table], api_visibility="private")
        show_btn.click(show_image, image_id, [shown, shown_caption], api_name="show_image")
        edit_btn.click(edit, in_order(EditInputs, image_id=image_id, strength=strength, seed=edit_seed), edits,
                       api_name="edit")
        table.select(pick, table, image_id, api_visibility="private").then(show_image, image_id, [shown, shown_caption],
                                                                 api_visibility="private")


# ---------------------------------------------------------------- generate

@dataclass
class GenerateInputs:
    """The Generate tab's controls; the field order is the /generate API's parameter order."""

    class_name: str
    s: float = limited("difficulty")
    calibrated: bool
    n: int = limited("num_images")
    seed: int = limited("seed")
    randomize: bool
    steps: int = limited("num_inference_steps")
    g: float = limited("guidance_scale")
    gd: float = limited("difficulty_guidance_scale")
    prompt: str
    exact: bool


def generate_caption(requested, conditioned, measured, predicted, seed, calibrated: bool, tries=None,
                     accepted=None) -> str:
    text = (f"requested s={requested:.2f}" + (f" (conditioned {conditioned:.2f})" if calibrated else "")
            + f" · measured s={measured:.2f} · predicted {predicted} · seed {seed}")
    if tries is not None:
        text += f" · try {tries}" + ("" if accepted else f" (none of {EXACT.max_tries} within ±{EXACT.tolerance})")
    return text


def generate_tab(ex: Workbench, class_names: list[str]):
    @user_errors
    @gpu
    @takes(GenerateInputs)
    def generate(x: GenerateInputs, progress=gr.Progress()):
        seed = random.randint(0, MAX_SEED) if x.randomize else x.seed
        r = ex.generate(x.class_name, x.s, x.n, seed, steps=x.steps, guidance_scale=x.g,
                        difficulty_guidance_scale=x.gd, prompt=x.prompt or None, calibrated=bool(x.calibrated),
                        exact=bool(x.exact), progress=lambda f, d: progress(f, desc=d))
        tries, accepted = r.tries or [None] * len(r.images), r.accepted or [None] * len(r.images)
        gallery = [(to_pil(im, DISPLAY_SCALE), generate_caption(rq, cs, ms, pr, sd, bool(x.calibrated), tr, ok))
                   for im, rq, cs, ms, pr, sd, tr, ok in zip(r.images, r.requested_s, r.conditioning_s, r.measured_s,
                                                             r.predicted, r.seeds, tries, accepted)]
        s, name = float(x.s), ex.class_names[ex.class_index(x.class_name)]
        near = ex.count_near(name, s, NEAR_WIDTH)
        warn = (f"⚠️ Only {near} real training images of {name} have s within ±{NEAR_WIDTH} of {s:.2f}: "
                "the model is extrapolating here, take these images with care." if near < NEAR_MIN_COUNT else
                f"{near} real training images of {name} lie within ±{NEAR_WIDTH} of s = {s:.2f}.")
        if r.settings.get("calibration_differences"):
            warn += ("\n\n⚠️ Calibrated at settings the calibration curve was not fitted at ("
                     + r.settings["calibration_differences"] + "): the measured difficulty may not match "
                     "the request. Reset those settings, or switch 'calibrated' off.")
        if r.tries is not None:
            warn += (f"\n\nExact difficulty: {sum(r.tries) / len(r.tries):.1f} tries per image on average (the cost: "
                     f"each try is one more generation); {sum(r.accepted)} of {len(r.accepted)} images within "
                     f"±{EXACT.tolerance} of s by the scoring classifiers and still named {name} by each.")
        return gallery, measured_histogram(r.measured_s, s), warn, int(seed), r

    @user_errors
    def export(state):
        if state is None:
            raise ValueError("Generate some images first, then export them")
        folder = Path(tempfile.mkdtemp(prefix="dacd-export-"))
        path = folder / "dacd_images.zip"
        with zipfile.ZipFile(path, "w") as z:
            for i, im in enumerate(state.images):
                with z.open(f"{i:03d}.png", "w") as f:
                    to_pil(im).save(f, format="png")
            z.writestr("manifest.csv", state.manifest(ex.class_names).to_csv(index=False))
        return str(path)

    with gr.Tab("Generate", id="generate"):
        note("**What am I looking at?** Pick a class and a difficulty `s`, then *Generate*. Under each image: the `s` "
             "you asked for, the `s` a separate evaluation classifier measured on it, and the class it thinks the "
             "image shows (a hard image is often mistaken for a neighbouring class). The histogram sums up how far "
             "the measured values are from the request. *Calibrated* asks the model for the value that measured as "
             "your request when the checkpoint was built.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                cls = ClassBox(class_names, class_names, value=class_names[6] if len(class_names) > 6 else None,
                               label="class")
                s = Slider("difficulty", value=DIFFICULTY.mu, step=0.01, label="difficulty s (0 = easy, 1 = hard)")
                calibrated = gr.Checkbox(ex.has_calibration(), label="calibrated (ask for the measured difficulty)")
                n = Slider("num_images", value=8, step=1, label="number of images")
                with gr.Row():
                    seed = Number("seed", value=0, label="seed", precision=0)
                    randomize = gr.Checkbox(False, label="randomize seed")
                with gr.Accordion("sampling", open=False):
                    steps = Slider("num_inference_steps", value=SAMPLING.num_inference_steps, step=1,
                                   label=f"steps ({SAMPLING.scheduler})")
                    g = Slider("guidance_scale", value=SAMPLING.guidance_scale, step=0.5, label="text guidance g_t")
                    gd = Slider("difficulty_guidance_scale", value=SAMPLING.difficulty_guidance_scale, step=0.5,
                                label="difficulty guidance g_d")
                    prompt = gr.Textbox("", label=f"prompt (empty: '{PROMPT_TEMPLATE.format('{class}')}')")
                exact = gr.Checkbox(False, label=f"exact difficulty (up to {EXACT.max_tries} tries per image)",
                                    info="keep a try only when the scoring classifiers measure it within "
                                         f"±{EXACT.tolerance} of s and still name the class; slower")
                btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column(scale=3, min_width=300):
                gallery = gr.Gallery(label="generated images", height="auto", format="png", object_fit="contain",
                                     elem_id="generate-gallery", elem_classes="dacd-gallery", allow_preview=False)
                warn = gr.Markdown(label="real images near this s", elem_id="generate-warning")
                with gr.Row():
                    hist = gr.Plot(label="measured s", min_width=280, elem_id="generate-hist")
                    with gr.Column(min_width=200):
                        used_seed = gr.Number(label="seed used (reusable)", precision=0, interactive=False)
                        export_btn = gr.Button("Export images + manifest (zip)")
                        export_file = gr.File(label="export", height=80)
        state = gr.State(None)
        inputs = in_order(GenerateInputs, class_name=cls, s=s, calibrated=calibrated, n=n, seed=seed,
                          randomize=randomize, steps=steps, g=g, gd=gd, prompt=prompt, exact=exact)
        btn.click(generate, inputs, [gallery, hist, warn, used_seed, state], api_name="generate")
        export_btn.click(export, state, export_file, api_name="export")


# ---------------------------------------------------------------- difficulty factors

@dataclass
class SweepInputs:
    """The Difficulty factors tab's controls, in the /sweep API's parameter order."""

    class_name: str
    seeds: str  # "0, 1, 2": one row each
    columns: int = limited("sweep_columns")
    difficulty_only: bool
    steps: int = limited("num_inference_steps")
    source_id: str  # "" (from noise) or a real image id: every cell is an edit of it
    strength: float = limited("strength")
    source_image: str | None = None  # or an uploaded image (a file path through the API)


def parse_seeds(text) -> list[int]:
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        raise ValueError("Give at least one seed, e.g. '0, 1, 2, 3'")
    try:
        seeds = [APP_LIMITS["seed"].check(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"{sentence(str(e))} Seeds are whole numbers separated by commas.") from None
    APP_LIMITS["sweep_rows"].check(len(seeds))
    return seeds


def sweep_tab(ex: Workbench, class_names: list[str]):
    @user_errors
    @gpu
    @takes(SweepInputs)
    def sweep(x: SweepInputs, progress=gr.Progress()):
        seeds = parse_seeds(x.seeds)
        upload = x.source_image or None
        r = ex.sweep(x.class_name, seeds, x.columns, difficulty_only=bool(x.difficulty_only), steps=x.steps,
                     source_id=x.source_id, upload=upload, strength=x.strength,
                     progress=lambda f, d: progress(f, desc=d))
        cols = r["measured"].shape[1]
        grid = image_grid([im for row in r["images"] for im in row], ncols=cols, scale=4,
                          column_labels=[f"s={v:.2f}" for v in r["s_values"]],
                          row_labels=[f"seed {sd}" for sd in r["seeds"]])
        real = [(to_pil(im, DISPLAY_SCALE), cap) for im, cap in r["real"]]
        base = [(to_pil(im, DISPLAY_SCALE), f"baseline · seed {sd} · measured s={m:.2f}")
                for im, sd, m in zip(r.get("baseline", []), r["seeds"], r.get("baseline_measured", []))]
        caption = (f"Columns: requested s from {r['s_values'][0]:.2f} to {r['s_values'][-1]:.2f}; rows: seeds "
                   f"{', '.join(map(str, r['seeds']))} (the starting noise is the same along a row).")
        if "source" in r:
            caption += (f" Every cell is an edit of **{r['source_id']}** at strength {r['strength']:g}, so the grid "
                        "shows what makes *this* item hard.")
        return grid, caption, sweep_lines(r["s_values"], r["measured"], r["seeds"], r.get("baseline_measured")), real, base

    with gr.Tab("Difficulty factors", id="sweep"):
        note("**What am I looking at?** Each row starts from the same random noise and only the requested difficulty "
             "changes from left (easy) to right (hard), so what changes along a row is what makes this class hard "
             "for a classifier. The plot shows what the evaluation classifier measured along each row (the dotted "
             "line is *measured = requested*; crosses are the baseline model without the dial). Below: real images "
             "of the class at the same `s`, for comparison. *Difficulty only* drops the text prompt.")
        with gr.Row():
            cls = ClassBox(class_names, class_names, value=class_names[6] if len(class_names) > 6 else None,
                           label="class", min_width=160)
            seeds = gr.Textbox("0, 1, 2, 3", label="seeds (one row each)", min_width=160)
            columns = Slider("sweep_columns", value=8, step=1, label="columns (s steps)", min_width=160)
            steps = Slider("num_inference_steps", value=SAMPLING.num_inference_steps, step=1, label="steps",
                           min_width=160)
        with gr.Accordion("start from a real image (optional)", open=False):
            with gr.Row():
                source_id = gr.Textbox("", label="real image id (e.g. test:7)", placeholder="empty: from noise",
                                       min_width=160)
                source_image = ImageUpload(label="or upload an image (up to 10 MB)", type="filepath", height=160,
                                           sources=["upload", "clipboard"], min_width=160,
                                           image_mode=None)  # as uploaded: the library handles alpha and 16 bit
                sweep_strength = Slider("strength", value=EDIT_STRENGTH, step=0.05, label="strength", min_width=160)
        with gr.Row():
            difficulty_only = gr.Checkbox(False, label="difficulty only (no prompt)")
            btn = gr.Button("Sweep", variant="primary", elem_id="sweep-button")
        caption = gr.Markdown(label="how to read the grid")
        grid = gr.Image(label="sweep: rows are seeds, columns go from easy to hard", type="pil", format="png",
                        elem_classes="dacd-gallery", elem_id="sweep-grid", show_label=False)  # headers in the image
        lines = gr.Plot(label="measured s along each row")
        with gr.Row():
            real = gr.Gallery(label="real images of the class at the same s", height="auto", format="png",
                              elem_classes="dacd-gallery", elem_id="sweep-real", allow_preview=False, min_width=300)
            base = gr.Gallery(label="baseline (no difficulty control), same seeds", height="auto", format="png",
                              elem_classes="dacd-gallery", elem_id="sweep-baseline", allow_preview=False,
                              min_width=300)
        inputs = in_order(SweepInputs, class_name=cls, seeds=seeds, columns=columns, difficulty_only=difficulty_only,
                          steps=steps, source_id=source_id, strength=sweep_strength, source_image=source_image)
        btn.click(sweep, inputs, [grid, caption, lines, real, base], api_name="sweep")


# ---------------------------------------------------------------- distributions

@dataclass
class DistributionInputs:
    """The Distributions tab's controls, in the /distribution API's parameter order."""

    mu: float = limited("mu")
    sigma: float = limited("sigma")
    n: int = limited("distribution_n")
    class_name: str  # a class, or "all"
    seed: int = limited("seed")
    exact: bool


def distribution_outputs(r: dict):
    """The figure and the share table of a Distributions result (live or the stored default view)."""
    curves = {k: r[k] for k in DISTRIBUTION_SETS if k in r}
    lo, hi = r["band"]
    rows = "\n".join(f"| {k} | {v:.1%} |" for k, v in r["shares"].items())
    text = (f"Share of images in the medium band [{lo}, {hi}] (all measured by the evaluation classifier "
            f"except *requested*):\n\n| set | share |\n|---|---|\n{rows}")
    if "exact_tries" in r:
        text += (f"\n\n*dacd exact*: {r['exact_tries']:.1f} tries per image on average; "
                 f"{r['exact_accepted']:.1%} of its images within ±{r['exact_tolerance']} of their requested s by "
                 "the scoring classifiers and still named as their class by each (the others: the nearest of "
                 f"{r['exact_max_tries']} tries).")
    return distribution_figure(curves, r["band"]), text


def distribution_tab(ex: Workbench, class_names: list[str]):
    @user_errors
    @gpu
    @takes(DistributionInputs)
    def distribution(x: DistributionInputs, progress=gr.Progress()):
        r = ex.distribution(x.mu, x.sigma, x.n, x.class_name, x.seed, progress=lambda f, d: progress(f, desc=d),
                            exact=bool(x.exact))
        return distribution_outputs(r)

    with gr.Tab("Distributions", id="distribution"):
        note("**What am I looking at?** A synthetic training set is made by asking for difficulties drawn from a "
             "bell curve `s ~ N(mu, sigma)`: *mu* is the average difficulty asked for, *sigma* its spread, *N* the "
             "number of images. The top histogram is that plan; below it, what a separate evaluation classifier "
             "measured on the **dacd** images, on the **baseline** model's images (same classes, no difficulty "
             "dial) and on **real** test images chosen for the same plan. The closer a set's histogram is to the "
             "plan, the better the dial works; the shaded *medium band* is where the paper says useful training "
             "images lie. The default view is precomputed; *Compare* recomputes it for your settings. *Exact "
             "difficulty* adds dacd images selected per image as Generate's switch does (tried until the scoring "
             "classifiers measure the requested s and still name the class; every set here samples uncalibrated "
             "at the default settings): slower, by its tries per image.")
        with gr.Row():
            mu = Slider("mu", value=DIFFICULTY.mu, step=0.05, label="mu (mean difficulty asked for)", min_width=160)
            sigma = Slider("sigma", value=DIFFICULTY.sigma, step=0.01, label="sigma (spread)", min_width=160)
            n = Slider("distribution_n", value=DEFAULT_VIEW["n"], step=1, label="N (images per set)", min_width=160)
        with gr.Row():  # a row of its own: squeezed beside class and seed on a phone, its label was cut
            dist_exact = gr.Checkbox(False, label=f"exact difficulty for dacd (up to {EXACT.max_tries} tries per "
                                     "image; slower)", elem_id="distribution-exact")
        with gr.Row():
            cls = ClassBox(["all"] + class_names, class_names, extra=("all",), value="all", label="class",
                           min_width=160)
            seed = Number("seed", value=0, label="seed", precision=0, min_width=120)
            btn = gr.Button("Compare", variant="primary", elem_id="distribution-button")
        with gr.Row():
            fig = gr.Plot(label="histograms", min_width=320, scale=2)
            with gr.Column(min_width=260):  # a column's min width makes the row wrap on phones
                shares = gr.Markdown(label="medium-band shares", elem_id="distribution-shares")
        calib = gr.Plot(label="calibration curve")
        inputs = in_order(DistributionInputs, mu=mu, sigma=sigma, n=n, class_name=cls, seed=seed, exact=dist_exact)
        # its own queue: a long comparison never holds up Generate or Sweep
        btn.click(distribution, inputs, [fig, shares], api_name="distribution", concurrency_id="distribution",
                  concurrency_limit=1)

        def first_view():
            """The stored default view and the calibration curve, shown when the page opens (read
            from files: no model is loaded for it)."""
            try:
                cal = Calibration.load(ex.checkpoint / LAYOUT.dacd)
            except ValueError:
                cal = None
            stored = ex.default_distribution()
            view = distribution_outputs(stored) if stored else (None, "Press *Compare* to compute a view.")
            return (*view, calibration_figure(cal, ex.class_names))

        return first_view, [fig, shares, calib]


# ---------------------------------------------------------------- app

def default_concurrency(threads: int) -> int:
    """Events served at once: one per `threads` CPU cores (at least one)."""
    return max(1, cpu_cores() // max(1, threads))


def build_app(ex: Workbench | None = None, max_queue: int = 16, concurrency: int | None = None) -> gr.Blocks:
    ex = ex or Workbench()
    for root in (ex.checkpoint.resolve().parent, REPO_ROOT):
        if str(root) not in _PRIVATE_ROOTS and str(root) != "/":
            _PRIVATE_ROOTS.append(str(root))
    problems = [redact(p) for p in ex.problems()]
    try:
        class_names = ex.class_names
    except (FileNotFoundError, ValueError, OSError) as e:  # the app still opens and says what is missing
        class_names = []
        problems = problems or [sentence(str(e))]
    with gr.Blocks(title="dacd: difficulty-aware controlled diffusion", analytics_enabled=False) as demo:
        gr.Markdown(intro(ex))
        if problems:
            gr.Markdown("\n".join(f"> ⚠️ {p}" for p in problems), elem_id="problems")
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone, tabs wrap instead of hiding behind "⋯"
            generate_tab(ex, class_names)
            sweep_tab(ex, class_names)
            first_view, first_outputs = distribution_tab(ex, class_names)
            browse_tab(ex, class_names)
        if class_names:
            ex.default_distribution()  # checked (fingerprint) once, at start, not when the page opens
            demo.load(user_errors(first_view), None, first_outputs, api_visibility="private")
    limit = concurrency or default_concurrency(torch.get_num_threads())
    demo.queue(max_size=max_queue, default_concurrency_limit=limit)
    return demo


def launch_kwargs() -> dict:
    """Gradio 6 takes theme and css at launch(); no server-side rendering (no Node.js needed);
    uploads over 10 MB are refused by the server (the library refuses them too)."""
    return {"theme": THEME, "css": CSS, "ssr_mode": False, "max_file_size": "10mb"}
