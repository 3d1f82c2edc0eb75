"""The app through its API (gradio_client), on a tiny checkpoint made by the tests."""

import re
import zipfile

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import copy_dacd

from dacd.calibration import Calibration
from dacd.defaults import EMBEDDED_CHECKPOINT
from dacd.explore import Workbench
from dacd.generation import Selection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


GEN = dict(class_name="Trouser", s=0.3, calibrated=False, n=3, seed=7, randomize=False, steps=2, g=3.0, gd=3.0,
           prompt="", exact=False)


def without_scorer(checkpoint, tmp_path):
    """A copy of the checkpoint (links) without its scoring classifier."""
    root = tmp_path / "no-scorer"
    root.mkdir()
    for item in checkpoint.iterdir():
        if item.name != "classifier":
            (root / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    return root


def refused(call, match: str) -> str:
    """The call must fail with an exception whose text matches `match` (not a bare HTTP status:
    gradio_client drops the body of a refused request, so checks run inside the event) and reads
    as a sentence."""
    try:
        call()
    except httpx.HTTPStatusError as e:
        raise AssertionError(f"refused before the queue: the client sees only {e}") from None
    except Exception as e:  # gradio_client.exceptions.AppError
        message = str(e)
    else:
        raise AssertionError("the call was not refused")
    assert re.search(match, message), message
    assert SENTENCE.match(message), f"not a sentence: {message!r}"
    return message


SENTENCE = re.compile(r"^[A-Z][^\n]*[.!?]$")


def gen_args(**kw):
    d = dict(GEN, **kw)
    return [d[k] for k in ("class_name", "s", "calibrated", "n", "seed", "randomize", "steps", "g", "gd", "prompt",
                           "exact")]


def test_generate_returns_n_captioned_images(client):
    gallery, hist, warn, seed, *_ = client.predict(*gen_args(), api_name="/generate")
    assert len(gallery) == 3
    for item in gallery:
        assert "requested s=0.30" in item["caption"] and "measured s=" in item["caption"]
        assert "predicted" in item["caption"]
    assert seed == 7
    assert "real training images" in warn


def test_bad_inputs_are_refused_with_the_reason_and_the_app_keeps_serving(client):
    for bad, match in ((dict(s=1.7), r"Difficulty must be a number from 0 to 1, got 1\.7"),
                       (dict(s=-0.1), r"Difficulty must be a number from 0 to 1"),
                       (dict(class_name="Shirtx"), r"Unknown class 'Shirtx': give a class name \(T-shirt/top, .*\) or "
                                                   r"its number, 0 to 9"),
                       (dict(n=1000), r"Number of images must be a whole number from 1 to 16, got 1000"),
                       (dict(seed=-5), r"Seed must be a whole number from 0 to 2147483647, got -5"),
                       (dict(steps=0), r"Steps must be a whole number from 1 to 50, got 0")):
        refused(lambda: client.predict(*gen_args(**bad), api_name="/generate"), match)
    refused(lambda: client.predict("Trouser", "0, 1", 100, False, 2, api_name="/sweep"),
            r"Columns must be a whole number from 2 to 12, got 100")
    refused(lambda: client.predict(0.5, 0.1, 100000, "all", 0, api_name="/distribution"),
            r"N must be a whole number from 1 to 2000, got 100000")
    gallery, *_ = client.predict(*gen_args(n=1), api_name="/generate")
    assert len(gallery) == 1


def test_defaults_class_ids_and_typed_named_outputs(client):
    gallery, hist, warn, seed = client.predict("Shirt", 0.5, api_name="/generate")  # every other input defaults
    assert len(gallery) == 8 and isinstance(seed, int) and seed == 0
    by_id, *_ = client.predict(6, 0.5, n=2, steps=3, api_name="/generate")
    by_name, *_ = client.predict("shirt", 0.5, n=2, steps=3, api_name="/generate")
    assert [g["caption"] for g in by_id] == [g["caption"] for g in by_name]
    assert [open(g["image"], "rb").read() for g in by_id] == [open(g["image"], "rb").read() for g in by_name]
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name, endpoint in api.items():
        for out in endpoint["returns"]:
            assert not out["label"].startswith("value_"), (name, out["label"])
        for p in endpoint["parameters"]:
            if p["parameter_name"] in ("n", "seed", "steps", "columns"):
                assert p["python_type"]["type"] == "int", (name, p)


def test_nan_and_out_of_range_values_are_refused_by_the_controls():
    """JSON clients cannot even send NaN; a raw request that does meets the same check."""
    import gradio as gr

    from dacd.ui import Slider

    s = Slider("difficulty", value=0.5, label="difficulty s")
    assert s.preprocess(0.25) == 0.25
    for bad in (float("nan"), 1.01, "hard"):
        with pytest.raises(gr.Error) as e:
            s.preprocess(bad)
        assert e.value.message == f"Difficulty must be a number from 0 to 1, got {bad!r}."  # a sentence, no quotes


def test_export_zip_has_images_and_manifest(client, tiny_checkpoint):
    client.predict(*gen_args(n=2, seed=3), api_name="/generate")
    # export reads the session state, so do both calls in one job sequence through the same client session
    path = client.predict(api_name="/export")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert {"000.png", "001.png", "manifest.csv"} <= set(names)
        manifest = pd.read_csv(z.open("manifest.csv"))
    assert list(manifest.seed) == [3, 4] and (manifest["class"] == "Trouser").all()
    assert {"requested_s", "measured_s", "steps", "guidance_scale"} <= set(manifest.columns)
    assert set(manifest.checkpoint) == {tiny_checkpoint.name}  # the folder's name, never the server's path


def test_sweep(client):
    grid, caption, lines, real, base = client.predict("Trouser", "0, 1", 3, False, 2, api_name="/sweep")
    assert grid and "rows: seeds 0, 1" in caption
    assert len(real) == 3 and len(base) == 2
    refused(lambda: client.predict("Trouser", "0, x", 3, False, 2, api_name="/sweep"), "Seed must be")


def test_sweep_from_a_real_image(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    grid, caption, lines, real, base = client.predict("Trouser", "0", 3, False, 4, "test:3", 0.5,
                                                      api_name="/sweep")
    assert grid and "edit of **test:3** at strength 0.5" in caption
    upload = tmp_path / "item.png"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(upload)  # colour, another size: greyscale, resized, padded
    grid, caption, *_ = client.predict("Bag", "0", 2, False, 4, "", 0.5, handle_file(str(upload)), api_name="/sweep")
    assert "edit of **your image**" in caption
    refused(lambda: client.predict("Bag", "0", 2, False, 4, "test:3", 0.5, handle_file(str(upload)),
                                   api_name="/sweep"), "either an image id or an upload")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    refused(lambda: client.predict("Bag", "0", 2, False, 4, "", 0.5, handle_file(str(text)), api_name="/sweep"),
            "cannot be read as an image|Invalid image|not.*image")
    refused(lambda: client.predict("Bag", "0", 2, False, 4, "test:3", 1.5, api_name="/sweep"),
            "Strength must be a number from 0.1 to 1")


def test_edit_makes_one_item_harder_and_easier(client):
    gallery = client.predict("test:7", 0.6, 3, api_name="/edit")
    assert len(gallery) == 6  # the item, then requested s 0.1 ... 0.9
    assert gallery[0]["caption"].startswith("test:7 · ") and "measured s=" in gallery[0]["caption"]
    for item, lev in zip(gallery[1:], ("0.10", "0.30", "0.50", "0.70", "0.90")):
        assert f"requested s={lev} · measured s=" in item["caption"] and "strength 0.6 · seed 3" in item["caption"]
    refused(lambda: client.predict("test:99999999", 0.6, 3, api_name="/edit"), "No image with id")
    refused(lambda: client.predict("", 0.6, 3, api_name="/edit"), "Give an image id")
    refused(lambda: client.predict("test:7", 0.0, 3, api_name="/edit"), "Strength must be")


def test_edits_share_noise_across_levels(tiny_checkpoint, fake_fmnist):
    import numpy as np

    from dacd.explore import Workbench

    ex = Workbench(tiny_checkpoint, data_dir=fake_fmnist)
    a = ex.edits("train:5", levels=(0.2, 0.8), strength=0.5, seed=1, steps=4)
    b = ex.edits("train:5", levels=(0.2,), strength=0.5, seed=1, steps=4)
    # a level does not depend on the others (batch shape moves float sums by ~1e-5; other noise by ~0.1)
    np.testing.assert_allclose(a["images"][0], b["images"][0], atol=1e-4)
    assert a["label"] == ex.image_label("train:5") and a["source_s"] is not None
    with pytest.raises(ValueError, match="less than one denoising step"):
        ex.edits("train:5", strength=0.1, steps=4)
    with pytest.raises(ValueError, match="needs a class"):
        ex.edits(upload=np.zeros((28, 28), np.uint8))


def test_distribution(client):
    fig, text = client.predict(0.5, 0.1, 20, "all", 0, api_name="/distribution")
    for name in ("requested", "dacd", "baseline", "real"):
        assert f"| {name} |" in text
    refused(lambda: client.predict(0.5, 2.0, 20, "all", 0, api_name="/distribution"), "Sigma must be")


def test_distribution_with_exact_difficulty(client, tiny_checkpoint, fake_fmnist, tmp_path):
    fig, text = client.predict(0.5, 0.1, 6, "all", 0, True, api_name="/distribution")
    assert "| dacd exact |" in text and "tries per image on average" in text
    ex = Workbench(tiny_checkpoint, data_dir=fake_fmnist)
    plain, r = ex.distribution(0.5, 0.1, 6, "all", 3), ex.distribution(0.5, 0.1, 6, "all", 3, exact=True)
    assert "dacd exact" not in plain and "exact_tries" not in plain
    np.testing.assert_array_equal(r["dacd"], plain["dacd"])  # the exact set is added; the others stay
    np.testing.assert_array_equal(r["real"], plain["real"])
    assert len(r["dacd exact"]) == 6 and np.isfinite(r["dacd exact"]).all()
    assert 1 <= r["exact_tries"] <= 6 and 0 <= r["exact_accepted"] <= 1
    assert list(r["shares"]) == ["requested", "dacd", "dacd exact", "baseline", "real"]
    # the two extremes of the rule: every first try accepted (the plain images), none ever
    easy = ex.distribution(0.5, 0.1, 6, "all", 3, exact=True,
                           selection=Selection(max_tries=3, tolerance=1.0, label_rule=False, pilot=0))
    assert easy["exact_tries"] == 1 and easy["exact_accepted"] == 1
    np.testing.assert_array_equal(easy["dacd exact"], plain["dacd"])
    never = ex.distribution(0.5, 0.1, 6, "all", 3, exact=True,
                            selection=Selection(max_tries=3, tolerance=0.0, label_rule=True, pilot=0))
    assert never["exact_tries"] == 3 and never["exact_accepted"] == 0 and never["exact_max_tries"] == 3
    root = without_scorer(tiny_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=r"Exact difficulty needs the checkpoint's scoring classifier"):
        Workbench(root, data_dir=fake_fmnist).distribution(0.5, 0.1, 6, "all", 0, exact=True)


def test_browse(client):
    gallery, hist, dmap, table = client.predict("Bag", api_name="/browse")
    assert len(gallery) == 9 and "s=" in gallery[0]["caption"]
    refused(lambda: client.predict("jacket", api_name="/browse"), "Unknown class")
    refused(lambda: client.predict("", api_name="/show_image"), "Give an image id")
    refused(lambda: client.predict("train:99999999", api_name="/show_image"), "No image with id")


@pytest.mark.skipif(not (EMBEDDED_CHECKPOINT / "dacd" / "dacd_config.json").exists(), reason="dacd model not shipped yet")
def test_generate_on_the_shipped_checkpoint():
    from gradio_client import Client

    from dacd.ui import build_app, launch_kwargs

    demo = build_app(Workbench(EMBEDDED_CHECKPOINT))
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **launch_kwargs())
    try:
        client = Client(url, verbose=False)
        gallery, hist, warn, seed, *_ = client.predict(*gen_args(class_name="Shirt", s=0.7, n=2, steps=5),
                                                       api_name="/generate")
        assert len(gallery) == 2 and all("requested s=0.70" in g["caption"] for g in gallery)
        refused(lambda: client.predict(*gen_args(s=2.0), api_name="/generate"), "Difficulty")
        gallery, *_ = client.predict(*gen_args(class_name="Bag", s=0.1, n=1, steps=5), api_name="/generate")
        assert len(gallery) == 1
    finally:
        demo.close()


def test_default_distribution_view_is_stored_and_checked(tiny_checkpoint, fake_fmnist, tmp_path, caplog):
    """The Distributions tab's first view comes from a file beside the models, used only while its
    fingerprint matches the models and settings it was computed from."""
    import logging

    from dacd.defaults import LAYOUT
    from dacd.explore import DEFAULT_VIEW

    root = tmp_path / "checkpoint"
    root.mkdir()
    for item in tiny_checkpoint.iterdir():
        (root / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    ex = Workbench(root, data_dir=fake_fmnist)
    assert ex.default_distribution() is None  # nothing stored: computed live
    path = ex.save_default_distribution()
    stored = Workbench(root, data_dir=fake_fmnist).default_distribution()
    live = ex.distribution(**DEFAULT_VIEW)
    assert stored is not None and stored["shares"] == pytest.approx(live["shares"])
    for key in ("requested", "dacd", "baseline", "real"):
        assert stored[key] == pytest.approx(live[key].tolist())
    # a (re)fitted calibration curve leaves the view's fingerprint as it is (the view samples
    # uncalibrated); any other file of the model changes it
    other = tmp_path / "other"
    other.mkdir()
    for item in tiny_checkpoint.iterdir():
        if item.name != "dacd":
            (other / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    model = copy_dacd(tiny_checkpoint / "dacd", other / "dacd")
    (model / LAYOUT.calibration).unlink(missing_ok=True)  # another test may have written one
    before = Workbench(other, data_dir=fake_fmnist).distribution_fingerprint(DEFAULT_VIEW)
    Calibration([0.0, 1.0], {str(c): [0.1, 0.8] for c in range(10)}, {"measured_by": "test"}).save(model)
    assert Workbench(other, data_dir=fake_fmnist).distribution_fingerprint(DEFAULT_VIEW) == before
    (model / "extra.json").write_text("{}")
    assert Workbench(other, data_dir=fake_fmnist).distribution_fingerprint(DEFAULT_VIEW) != before
    # another score table (an input of the real curve): the stored view no longer applies
    scores = pd.read_parquet(root / LAYOUT.scores)
    (root / LAYOUT.scores).unlink()
    scores.loc[0, "s"] = 1.0 - scores.loc[0, "s"]
    scores.to_parquet(root / LAYOUT.scores)
    with caplog.at_level(logging.WARNING, logger="dacd.explore"):
        assert Workbench(root, data_dir=fake_fmnist).default_distribution() is None
    assert f"ignoring {LAYOUT.distribution_view}" in caplog.text
    path.write_bytes(b"\x00\xff not json")  # a damaged file is ignored, never fatal
    assert Workbench(root, data_dir=fake_fmnist).default_distribution() is None


def test_exact_difficulty_selects_per_image_and_is_refused_without_a_scoring_classifier(client, tiny_checkpoint,
                                                                                       fake_fmnist, tmp_path):
    gallery, hist, text, seed = client.predict(*gen_args(n=2, exact=True), api_name="/generate")
    assert len(gallery) == 2 and all(" · try " in g["caption"] for g in gallery)
    assert "tries per image on average" in text
    r = Workbench(tiny_checkpoint, data_dir=fake_fmnist).generate("Trouser", 0.3, 2, 7, steps=2, exact=True)
    assert all(1 <= t <= 6 for t in r.tries) and len(r.accepted) == 2
    plain = Workbench(tiny_checkpoint, data_dir=fake_fmnist).generate("Trouser", 0.3, 2, 7, steps=2)
    for t, a, im, im0 in zip(r.tries, r.accepted, r.images, plain.images):  # try 1 is the plain image
        assert (t == 1) <= bool((im == im0).all())
    root = without_scorer(tiny_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=r"Exact difficulty needs the checkpoint's scoring classifier \(classifier/\)"):
        Workbench(root, data_dir=fake_fmnist).generate("Trouser", 0.3, 1, 0, steps=2, exact=True)


def test_calibrated_generation_says_when_its_settings_are_not_the_curves(tiny_checkpoint, fake_fmnist, tmp_path):
    import json
    import shutil
    import warnings

    from dacd.calibration import Calibration, CalibrationSettingsWarning
    from dacd.defaults import LAYOUT

    root = tmp_path / "calibrated"
    root.mkdir()
    for item in tiny_checkpoint.iterdir():
        if item.name != LAYOUT.dacd:
            (root / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    src = (tiny_checkpoint / LAYOUT.dacd).resolve()
    shutil.copytree(src, root / LAYOUT.dacd)
    config = json.loads((src / "dacd_config.json").read_text())  # the copy names its base by absolute path
    config["base"] = str((src / config["base"]).resolve())
    (root / LAYOUT.dacd / "dacd_config.json").write_text(json.dumps(config))
    meta = {"steps": 2, "scheduler": "dpm++", "guidance_scale": 3.0, "difficulty_guidance_scale": 3.0}
    Calibration([0.0, 0.5, 1.0], {str(c): [0.1, 0.3, 0.6] for c in range(10)}, meta).save(root / LAYOUT.dacd)
    ex = Workbench(root, data_dir=fake_fmnist)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationSettingsWarning)
        same = ex.generate("Trouser", 0.3, 1, 7, steps=2, guidance_scale=3.0, difficulty_guidance_scale=3.0,
                           calibrated=True)
    assert same.settings["calibration_differences"] == "" and same.conditioning_s == pytest.approx([0.5])
    with pytest.warns(CalibrationSettingsWarning):
        other = ex.generate("Trouser", 0.3, 1, 7, steps=3, guidance_scale=3.0, difficulty_guidance_scale=6.0,
                            calibrated=True)
    assert other.settings["calibration_differences"] == "steps 3 (curve: 2); difficulty guidance 6 (curve: 3)"
    assert "calibration_differences" not in ex.generate("Trouser", 0.3, 1, 7, steps=3).settings
