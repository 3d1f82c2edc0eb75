import numpy as np
import pytest

from dacd.explore import Explorer
from dacd.plots import data_map_figure, difficulty_histogram, image_grid, to_pil

pytestmark = pytest.mark.slow  # needs the tiny scoring run


@pytest.fixture(scope="module")
def ex(tiny_scores, fake_fmnist):
    return Explorer(tiny_scores, data_dir=fake_fmnist)


def test_browse_orders_images_by_difficulty(ex):
    r = ex.browse("Trouser")
    assert len(r.images) == len(r.captions) == 9
    assert r.images[0].shape == (1, 32, 32) and r.images[0].dtype == np.uint8
    assert (np.diff(r.rows.s.to_numpy()) >= 0).all() and (r.rows.class_name == "Trouser").all()
    assert "s=" in r.captions[0] and "predicted" in r.captions[0]
    # the image shown is the one the table names
    np.testing.assert_array_equal(r.images[3], ex.image(r.rows.id.iloc[3]))


def test_figures_for_a_class(ex):
    hist = difficulty_histogram(ex.scores, "Bag")
    assert [t.name for t in hist.data] == ["all classes", "Bag"]
    dmap = data_map_figure(ex.scores, "Bag")
    n = sum(len(t.x) for t in dmap.data)
    assert n == int(((ex.scores.class_name == "Bag") & ex.scores.confidence.notna()).sum())
    assert "id" in dmap.data[0].hovertemplate


def test_unknown_class_and_id_are_clear_errors(ex):
    with pytest.raises(ValueError, match="Unknown class 'jacket'"):
        ex.browse("jacket")
    with pytest.raises(ValueError, match="ids look like"):
        ex.image("banana")
    with pytest.raises(ValueError, match="no image with id"):
        ex.image("train:999999")


def test_missing_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="score_difficulty.py"):
        Explorer(tmp_path).scores


def test_pixels_stay_crisp():
    a = np.zeros((1, 4, 4), np.uint8)
    a[0, 1, 2] = 255
    im = to_pil(a, scale=5)
    assert im.size == (20, 20) and set(np.unique(np.asarray(im))) == {0, 255}
    grid = image_grid([a, a, a], ncols=2, scale=2, pad=1)
    assert grid.size == (2 * 8 + 3, 2 * 8 + 3)
