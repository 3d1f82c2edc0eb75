"""The app's API as gradio_client sees it. Changing it breaks every client's calls: when a
change is meant, update API below on purpose."""

import re
from dataclasses import fields

import pytest

from dacd.defaults import APP_LIMITS
from dacd.explore import Workbench

REQUIRED = "<no default>"  # a parameter the client must pass

# endpoint -> [(parameter name, default)], in the order clients pass them; on the tiny test
# checkpoint (no calibration curve, so `calibrated` is off by default).
API = {
    "/generate": [("class_name", "Shirt"), ("s", 0.5), ("calibrated", False), ("n", 8), ("seed", 0),
                  ("randomize", False), ("steps", 15), ("g", 5.0), ("gd", 8.0), ("prompt", ""), ("exact", False)],
    "/export": [],
    "/sweep": [("class_name", "Shirt"), ("seeds", "0, 1, 2, 3"), ("columns", 8), ("difficulty_only", False),
               ("steps", 15), ("source_id", ""), ("strength", 0.5), ("source_image", None)],
    "/distribution": [("mu", 0.5), ("sigma", 0.1), ("n", 200), ("class_name", "all"), ("seed", 0), ("exact", False)],
    "/browse": [("class_name", "T-shirt/top")],
    "/show_image": [("image_id", REQUIRED)],
    "/edit": [("image_id", REQUIRED), ("strength", 0.5), ("seed", 0)],
}


@pytest.mark.slow  # app_url serves the tiny checkpoint, trained in subprocesses
def test_api_parameters_are_pinned(app_url):
    from gradio_client import Client

    api = Client(app_url, verbose=False).view_api(return_format="dict", print_info=False)
    got = {name: [(p["parameter_name"], p["parameter_default"] if p["parameter_has_default"] else REQUIRED)
                  for p in endpoint["parameters"]]
           for name, endpoint in api["named_endpoints"].items()}
    assert got == API
    assert not api["unnamed_endpoints"]


# ---------------------------------------------------------------- controls accept exactly their limits

class NamedClasses(Workbench):
    """A workbench with class names and no checkpoint files: enough to build the app."""

    @property
    def class_names(self) -> list[str]:
        return [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from dacd.ui import build_app

    return build_app(NamedClasses(tmp_path_factory.mktemp("no-checkpoint")))


def test_every_bounded_control_spans_exactly_what_it_accepts(app):
    import gradio as gr

    from dacd.ui import DistributionInputs, EditInputs, GenerateInputs, SweepInputs

    inputs_of = {"generate": GenerateInputs, "sweep": SweepInputs, "distribution": DistributionInputs,
                 "edit": EditInputs}
    bounded = set()
    for fn in app.fns.values():
        if fn.api_name not in inputs_of:
            continue
        for f, control in zip(fields(inputs_of[fn.api_name]), fn.inputs, strict=True):
            if "limit" not in f.metadata:
                continue
            limit = APP_LIMITS[f.metadata["limit"]]
            assert control.limit is limit, (fn.api_name, f.name)
            assert (control.minimum, control.maximum) == (limit.lo, limit.hi), (fn.api_name, f.name)
            assert control.preprocess(control.value) == control.value  # the default is allowed
            step = control.step if isinstance(control, gr.Slider) else 1
            for value, allowed in ((limit.lo, True), (limit.hi, True), (limit.lo - step, False),
                                   (limit.hi + step, False)):
                if allowed:
                    assert control.preprocess(value) == value
                else:
                    with pytest.raises(gr.Error, match=re.escape(limit.label[0].upper() + limit.label[1:])):
                        control.preprocess(value)
            bounded.add(f"{fn.api_name}.{f.name}")
    assert bounded == {"generate.s", "generate.n", "generate.seed", "generate.steps", "generate.g", "generate.gd",
                       "sweep.columns", "sweep.steps", "sweep.strength", "distribution.mu", "distribution.sigma",
                       "distribution.n", "distribution.seed", "edit.strength", "edit.seed"}


def test_class_boxes_take_names_and_ids_and_refuse_others(app):
    import gradio as gr

    from dacd.ui import ClassDropdown

    boxes = {fn.api_name: c for fn in app.fns.values() for c in fn.inputs if isinstance(c, ClassDropdown)}
    assert {"generate", "sweep", "distribution", "browse"} <= set(boxes)
    for name, box in boxes.items():
        assert not box.filterable and not box.allow_custom_value  # no free typing in the page
        assert box.preprocess("class 3") == "class 3"
        assert box.preprocess(3) == box.preprocess("3") == box.preprocess("CLASS 3") == "class 3"
        with pytest.raises(gr.Error) as e:
            box.preprocess("class 12")
        assert e.value.message.startswith("Unknown class 'class 12': give a class name (class 0, class 1,")
    assert boxes["distribution"].preprocess("all") == "all"


def test_messages_do_not_show_the_servers_folders(app, tmp_path_factory):
    from dacd.defaults import REPO_ROOT
    from dacd.ui import sentence

    # `app` was built on a workbench in a temporary folder: its parent and the repository are private
    text = sentence(f"{REPO_ROOT}/checkpoints/fashion-mnist/dacd holds no trained dacd model")
    assert text == "Checkpoints/fashion-mnist/dacd holds no trained dacd model."
    assert "/usr/share/datasets/fashion-mnist" in sentence("no files in /usr/share/datasets/fashion-mnist")


def test_error_texts_read_as_sentences():
    from dacd.ui import sentence

    assert sentence("'unknown class 3'") == "Unknown class 3."
    assert sentence("ids look like 'train:123' or 'test:45'") == "Ids look like 'train:123' or 'test:45'."
    assert sentence("steps must be a whole number from 1 to 50, got 0.") == "Steps must be a whole number from 1 to 50, got 0."
    assert sentence("") == "Something went wrong."
    for limit in APP_LIMITS.values():
        try:
            limit.check(-1e12)
        except ValueError as e:
            text = sentence(str(e))
            assert text[0].isupper() and text.endswith(".") and text[0] not in "'\"", text
