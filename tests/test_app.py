"""The app through its API (gradio_client), on a tiny checkpoint made by the tests."""

import re
import zipfile

import httpx
import pandas as pd
import pytest

from dacd.defaults import EMBEDDED_CHECKPOINT
from dacd.explore import Workbench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


GEN = dict(class_name="Trouser", s=0.3, calibrated=False, n=3, seed=7, randomize=False, steps=2, g=3.0, gd=3.0,
           prompt="")


def refused(call, match: str) -> str:
    """The call must fail with a message matching `match`, whether Gradio refused it before the
    queue (HTTP 400 with a detail) or the event raised (AppError)."""
    try:
        call()
    except httpx.HTTPStatusError as e:
        message = e.response.json().get("detail", "")
    except Exception as e:  # gradio_client.exceptions.AppError and friends
        message = str(e)
    else:
        raise AssertionError("the call was not refused")
    assert re.search(match, message), message
    return message


def gen_args(**kw):
    d = dict(GEN, **kw)
    return [d[k] for k in ("class_name", "s", "calibrated", "n", "seed", "randomize", "steps", "g", "gd", "prompt")]


def test_generate_returns_n_captioned_images(client):
    gallery, hist, warn, seed, *_ = client.predict(*gen_args(), api_name="/generate")
    assert len(gallery) == 3
    for item in gallery:
        assert "requested s=0.30" in item["caption"] and "measured s=" in item["caption"]
        assert "predicted" in item["caption"]
    assert seed == 7
    assert "real training images" in warn


def test_bad_inputs_are_refused_and_the_app_keeps_serving(client):
    for bad, match in ((dict(s=1.5), "difficulty"), (dict(s=-0.2), "difficulty"),
                       (dict(class_name="jacket"), "Unknown class"), (dict(n=40), "number of images"),
                       (dict(seed=-3), "seed"), (dict(steps=0), "steps")):
        refused(lambda: client.predict(*gen_args(**bad), api_name="/generate"), match)
    gallery, *_ = client.predict(*gen_args(n=1), api_name="/generate")
    assert len(gallery) == 1


def test_nan_difficulty_is_refused_by_the_validator(tiny_checkpoint, fake_fmnist):
    """JSON clients cannot even send NaN; a raw request that does meets the same validator."""
    import gradio as gr

    from dacd.ui import generate_validator

    check = generate_validator(Workbench(tiny_checkpoint, data_dir=fake_fmnist))
    with pytest.raises(gr.Error, match="difficulty"):
        check(*gen_args(s=float("nan")))
    assert all(v["is_valid"] for v in check(*gen_args()))


def test_export_zip_has_images_and_manifest(client):
    client.predict(*gen_args(n=2, seed=3), api_name="/generate")
    # export reads the session state, so do both calls in one job sequence through the same client session
    path = client.predict(api_name="/export")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert {"000.png", "001.png", "manifest.csv"} <= set(names)
        manifest = pd.read_csv(z.open("manifest.csv"))
    assert list(manifest.seed) == [3, 4] and (manifest["class"] == "Trouser").all()
    assert {"requested_s", "measured_s", "steps", "guidance_scale"} <= set(manifest.columns)


def test_sweep(client):
    grid, caption, lines, real, base = client.predict("Trouser", "0, 1", 3, False, 2, api_name="/sweep")
    assert grid and "rows: seeds 0, 1" in caption
    assert len(real) == 3 and len(base) == 2
    refused(lambda: client.predict("Trouser", "0, x", 3, False, 2, api_name="/sweep"), "seed")


def test_distribution(client):
    fig, text = client.predict(0.5, 0.1, 20, "all", 0, api_name="/distribution")
    for name in ("requested", "dacd", "baseline", "real"):
        assert f"| {name} |" in text
    refused(lambda: client.predict(0.5, 2.0, 20, "all", 0, api_name="/distribution"), "sigma")


def test_browse(client):
    gallery, hist, dmap, table = client.predict("Bag", api_name="/browse")
    assert len(gallery) == 9 and "s=" in gallery[0]["caption"]
    refused(lambda: client.predict("jacket", api_name="/browse"), "Unknown class")


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
        refused(lambda: client.predict(*gen_args(s=2.0), api_name="/generate"), "difficulty")
        gallery, *_ = client.predict(*gen_args(class_name="Bag", s=0.1, n=1, steps=5), api_name="/generate")
        assert len(gallery) == 1
    finally:
        demo.close()
