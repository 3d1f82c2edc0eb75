"""Gradio Blocks for the dacd app. Callbacks are thin adapters over `dacd.explore`;
no model code lives here."""

from __future__ import annotations

import functools
import inspect
import random
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import gradio as gr

from .data import DatasetError
from .defaults import APP_LIMITS, DIFFICULTY, MAX_SEED, PROMPT_TEMPLATE, SAMPLING
from .explore import BROWSE_PERCENTILES, NEAR_MIN_COUNT, NEAR_WIDTH, Explorer, Workbench
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
CSS = ".dacd-gallery img { image-rendering: pixelated; }"
THEME = "soft"


class _NamesItself:
    """Out-of-range input through the API is refused with a message naming the control."""

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error as e:
            raise gr.Error(f"{self.label}: {e.message}") from None


class Slider(_NamesItself, gr.Slider):
    def get_block_name(self) -> str:  # rendered by Gradio's own slider
        return "slider"


class Number(_NamesItself, gr.Number):
    def get_block_name(self) -> str:
        return "number"


def span(limit: str) -> dict:
    """A slider's or number box's bounds: those of `APP_LIMITS[limit]`, which the validators check."""
    lim = APP_LIMITS[limit]
    return {"minimum": lim.lo, "maximum": lim.hi}


# ---------------------------------------------------------------- an event's inputs, by name

def limited(limit: str):
    """A field of an event's inputs that the validator checks against `APP_LIMITS[limit]`."""
    return field(metadata={"limit": limit})


def check_limits(x, skip=()) -> None:
    """ValueError for the first field of `x` (not named in `skip`) outside its `limited(...)` bounds."""
    for f in fields(x):
        if "limit" in f.metadata and f.name not in skip:
            APP_LIMITS[f.metadata["limit"]].check(getattr(x, f.name))


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

    def decorate(fn):
        own = list(inspect.signature(fn).parameters.values())[1:]
        signature = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names] + own)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            rest = {k: v for k, v in given.items() if k not in names}
            return fn(inputs_cls(**{n: given[n] for n in names}), **rest)

        wrapper.__signature__ = signature
        return wrapper

    return decorate


def refuse(inputs_cls, check):
    """A Gradio event validator: `check(inputs)` raising ValueError refuses the event before it
    reaches the queue, with the error's message."""

    @takes(inputs_cls)
    def validate(x):
        try:
            check(x)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return [gr.validate(True, "") for _ in fields(x)]

    return validate


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
        "**dacd — difficulty-aware controlled diffusion.** Generate images of a class at a chosen difficulty "
        "`s = 1 − p(true class)`, sweep the difficulty with the noise fixed to see what makes a class hard, and "
        "check with an independent classifier that the dial really works. "
        f"Loaded checkpoint: `{ex.checkpoint}` (device: {ex.device() if hasattr(ex, 'device') else 'cpu'})."
    )


# ---------------------------------------------------------------- browse

def browse_tab(ex: Explorer, class_choices: list[str]) -> None:
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
            cls = gr.Dropdown(class_choices, value=class_choices[0] if class_choices else None, label="class",
                              allow_custom_value=True)
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
        cls.change(browse, cls, [gallery, hist, dmap, table], api_visibility="private")
        show_btn.click(show_image, image_id, [shown, shown_caption], api_name="show_image")
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


def generate_validator(ex: Workbench):
    def check(x: GenerateInputs):
        ex.class_index(x.class_name)
        check_limits(x, skip=("seed",) if x.randomize else ())  # a random seed replaces the box's

    return refuse(GenerateInputs, check)


def generate_tab(ex: Workbench, class_choices: list[str]):
    @user_errors
    @gpu
    @takes(GenerateInputs)
    def generate(x: GenerateInputs, progress=gr.Progress()):
        seed = random.randint(0, MAX_SEED) if x.randomize else int(x.seed)
        r = ex.generate(x.class_name, x.s, int(x.n), seed, steps=int(x.steps), guidance_scale=x.g,
                        difficulty_guidance_scale=x.gd, prompt=x.prompt, calibrated=x.calibrated,
                        progress=lambda f, d: progress(f, desc=d))
        gallery = [(to_pil(im, DISPLAY_SCALE),
                    f"requested s={rq:.2f}" + (f" (conditioned {cs:.2f})" if x.calibrated else "")
                    + f" · measured s={ms:.2f} · predicted {pr} · seed {sd}")
                   for im, rq, cs, ms, pr, sd in zip(r.images, r.requested_s, r.conditioning_s, r.measured_s,
                                                     r.predicted, r.seeds)]
        s = float(x.s)
        near = ex.count_near(x.class_name, s, NEAR_WIDTH)
        warn = (f"⚠️ Only {near} real training images of {x.class_name} have s within ±{NEAR_WIDTH} of {s:.2f}: "
                "the model is extrapolating here, take these images with care." if near < NEAR_MIN_COUNT else
                f"{near} real training images of {x.class_name} lie within ±{NEAR_WIDTH} of s={s:.2f}.")
        return gallery, measured_histogram(r.measured_s, s), warn, seed, r

    @user_errors
    def export(state):
        if state is None:
            raise ValueError("generate some images first, then export them")
        folder = Path(tempfile.mkdtemp(prefix="dacd-export-"))
        path = folder / "dacd_images.zip"
        with zipfile.ZipFile(path, "w") as z:
            for i, im in enumerate(state.images):
                with z.open(f"{i:03d}.png", "w") as f:
                    to_pil(im).save(f, format="png")
            z.writestr("manifest.csv", state.manifest(ex.class_names).to_csv(index=False))
        return str(path)

    with gr.Tab("Generate"):
        gr.Markdown("Pick a class and a difficulty; every image is measured by the evaluation classifier "
                    "(another architecture and seed than the scoring classifier).")
        with gr.Row():
            with gr.Column(scale=1):
                cls = gr.Dropdown(class_choices, value=class_choices[6] if len(class_choices) > 6 else None,
                                  label="class", allow_custom_value=True)
                s = Slider(**span("difficulty"), value=0.5, step=0.01, label="difficulty s (0 = easy, 1 = hard)")
                calibrated = gr.Checkbox(ex.has_calibration(), label="calibrated (ask for the measured difficulty)",
                                         info="condition on the value the scoring classifier measures as s")
                n = Slider(**span("num_images"), value=8, step=1, label="number of images")
                with gr.Row():
                    seed = Number(0, label="seed", precision=0, **span("seed"))
                    randomize = gr.Checkbox(False, label="randomize seed")
                with gr.Accordion("sampling", open=False):
                    steps = Slider(**span("num_inference_steps"), value=SAMPLING.num_inference_steps, step=1,
                                   label=f"steps ({SAMPLING.scheduler})")
                    g = Slider(**span("guidance_scale"), value=SAMPLING.guidance_scale, step=0.5,
                               label="text guidance g_t")
                    gd = Slider(**span("difficulty_guidance_scale"), value=SAMPLING.difficulty_guidance_scale,
                                step=0.5, label="difficulty guidance g_d")
                    prompt = gr.Textbox(label=f"prompt (empty: '{PROMPT_TEMPLATE.format('{class}')}')")
                btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="generated", columns=8, height="auto", format="png", object_fit="contain",
                                     elem_id="generate-gallery", elem_classes="dacd-gallery")
                warn = gr.Markdown(elem_id="generate-warning")
                with gr.Row():
                    hist = gr.Plot(label="measured s")
                    with gr.Column():
                        used_seed = Number(label="seed used (reusable)", precision=0, interactive=False)
                        export_btn = gr.Button("Export images + manifest (zip)")
                        export_file = gr.File(label="export")
        state = gr.State(None)
        inputs = in_order(GenerateInputs, class_name=cls, s=s, calibrated=calibrated, n=n, seed=seed,
                          randomize=randomize, steps=steps, g=g, gd=gd, prompt=prompt)
        btn.click(generate, inputs, [gallery, hist, warn, used_seed, state], api_name="generate",
                  validator=generate_validator(ex))
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


def parse_seeds(text) -> list[int]:
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        raise ValueError("give at least one seed, e.g. '0, 1, 2, 3'")
    try:
        return [APP_LIMITS["seed"].check(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"{e} Seeds are whole numbers separated by commas.") from None


def sweep_validator(ex: Workbench):
    def check(x: SweepInputs):
        ex.class_index(x.class_name)
        APP_LIMITS["sweep_rows"].check(len(parse_seeds(x.seeds)))
        check_limits(x)

    return refuse(SweepInputs, check)


def sweep_tab(ex: Workbench, class_choices: list[str]):
    @user_errors
    @gpu
    @takes(SweepInputs)
    def sweep(x: SweepInputs, progress=gr.Progress()):
        r = ex.sweep(x.class_name, parse_seeds(x.seeds), int(x.columns), difficulty_only=bool(x.difficulty_only),
                     steps=int(x.steps), progress=lambda f, d: progress(f, desc=d))
        rows, cols = r["measured"].shape
        grid = image_grid([im for row in r["images"] for im in row], ncols=cols, scale=4)
        real = [(to_pil(im, DISPLAY_SCALE), cap) for im, cap in r["real"]]
        base = [(to_pil(im, DISPLAY_SCALE), f"baseline · seed {sd} · measured s={m:.2f}")
                for im, sd, m in zip(r.get("baseline", []), r["seeds"], r.get("baseline_measured", []))]
        header = " · ".join(f"{v:.2f}" for v in r["s_values"])
        return (grid, f"columns: requested s = {header}; rows: seeds {', '.join(map(str, r['seeds']))}",
                sweep_lines(r["s_values"], r["measured"], r["seeds"], r.get("baseline_measured")), real, base)

    with gr.Tab("Difficulty factors"):
        gr.Markdown("Sweep `s` from easy to hard with the noise fixed along each row: what changes is what makes "
                    "the class hard. *Difficulty only* drops the prompt (empty prompt + difficulty tokens), as in the "
                    "paper's factor visualisation.")
        with gr.Row():
            cls = gr.Dropdown(class_choices, value=class_choices[6] if len(class_choices) > 6 else None, label="class",
                              allow_custom_value=True)
            seeds = gr.Textbox("0, 1, 2, 3", label="seeds (one row each)")
            columns = Slider(**span("sweep_columns"), value=8, step=1, label="columns (s steps)")
            difficulty_only = gr.Checkbox(False, label="difficulty only")
            steps = Slider(**span("num_inference_steps"), value=SAMPLING.num_inference_steps, step=1, label="steps")
            btn = gr.Button("Sweep", variant="primary")
        with gr.Row():
            with gr.Column(scale=3):
                grid = gr.Image(label="sweep (rows: seeds, columns: easy → hard)", type="pil", format="png",
                                elem_classes="dacd-gallery")
                caption = gr.Markdown()
            lines = gr.Plot(label="measured s along each row")
        with gr.Row():
            real = gr.Gallery(label="real images of the class at the same s", columns=8, height="auto", format="png",
                              elem_classes="dacd-gallery")
            base = gr.Gallery(label="baseline (no difficulty control), same seeds", columns=4, height="auto",
                              format="png", elem_classes="dacd-gallery")
        inputs = in_order(SweepInputs, class_name=cls, seeds=seeds, columns=columns, difficulty_only=difficulty_only,
                          steps=steps)
        btn.click(sweep, inputs, [grid, caption, lines, real, base], api_name="sweep", validator=sweep_validator(ex))


# ---------------------------------------------------------------- distributions

@dataclass
class DistributionInputs:
    """The Distributions tab's controls, in the /distribution API's parameter order."""

    mu: float = limited("mu")
    sigma: float = limited("sigma")
    n: int = limited("distribution_n")
    class_name: str  # a class, or "all"
    seed: int = limited("seed")


def distribution_validator(ex: Workbench):
    def check(x: DistributionInputs):
        check_limits(x)
        if x.class_name not in (None, "", "all"):
            ex.class_index(x.class_name)

    return refuse(DistributionInputs, check)


def distribution_tab(ex: Workbench, class_choices: list[str]):
    @user_errors
    @gpu
    @takes(DistributionInputs)
    def distribution(x: DistributionInputs, progress=gr.Progress()):
        r = ex.distribution(x.mu, x.sigma, int(x.n), x.class_name, int(x.seed),
                            progress=lambda f, d: progress(f, desc=d))
        curves = {k: r[k] for k in ("requested", "dacd", "baseline", "real") if k in r}
        lo, hi = r["band"]
        rows = "\n".join(f"| {k} | {v:.1%} |" for k, v in r["shares"].items())
        text = (f"Share of images in the medium band [{lo}, {hi}] (all measured by the evaluation classifier "
                f"except *requested*):\n\n| set | share |\n|---|---|\n{rows}")
        return distribution_figure(curves, r["band"]), text

    with gr.Tab("Distributions"):
        gr.Markdown("The paper's central figure, live: ask for `s ~ N(mu, sigma)` and compare what dacd, the baseline "
                    "and real test images (same instrument) actually measure.")
        with gr.Row():
            mu = Slider(**span("mu"), value=DIFFICULTY.mu, step=0.05, label="mu")
            sigma = Slider(**span("sigma"), value=DIFFICULTY.sigma, step=0.01, label="sigma")
            n = Slider(**span("distribution_n"), value=200, step=1, label="N")
            cls = gr.Dropdown(["all"] + class_choices, value="all", label="class", allow_custom_value=True)
            seed = Number(0, label="seed", precision=0, **span("seed"))
            btn = gr.Button("Compare", variant="primary")
        with gr.Row():
            fig = gr.Plot(label="histograms")
            shares = gr.Markdown()
        calib = gr.Plot(label="calibration curve")
        inputs = in_order(DistributionInputs, mu=mu, sigma=sigma, n=n, class_name=cls, seed=seed)
        btn.click(distribution, inputs, [fig, shares], api_name="distribution", validator=distribution_validator(ex))

        def show_calibration():
            try:
                cal = ex.pipeline("dacd").calibration
            except (FileNotFoundError, OSError, ValueError):
                cal = None
            return calibration_figure(cal, ex.class_names)

        return show_calibration, calib


# ---------------------------------------------------------------- app

def build_app(ex: Workbench | None = None, max_queue: int = 16, concurrency: int = 1) -> gr.Blocks:
    ex = ex or Workbench()
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
            generate_tab(ex, class_choices)
            sweep_tab(ex, class_choices)
            show_calibration, calib = distribution_tab(ex, class_choices)
            browse_tab(ex, class_choices)
        if class_choices:
            demo.load(show_calibration, None, calib, api_visibility="private")
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo


def launch_kwargs() -> dict:
    """Gradio 6 takes theme and css at launch(); no server-side rendering (no Node.js needed)."""
    return {"theme": THEME, "css": CSS, "ssr_mode": False}
