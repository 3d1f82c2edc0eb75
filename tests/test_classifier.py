import numpy as np
import pytest
import torch

from dacd.classifier import Classifier, TrainConfig, build_classifier, load_classifiers, predict, train_classifier
from dacd.data import load_fashion_mnist


def test_build_train_predict_round_trip(fake_fmnist, tmp_path):
    ds = load_fashion_mnist("train", fake_fmnist)
    torch.manual_seed(0)
    model = build_classifier("resnet10t", in_chans=1, num_classes=10, class_names=ds.class_names, mean=0.2, std=0.3)
    losses = train_classifier(model, ds.images, ds.labels, TrainConfig(epochs=2, batch_size=32), progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))
    probs, feats = predict(model, ds.images[:50], features=True, batch_size=16)
    assert probs.shape == (50, 10) and feats.ndim == 2 and feats.shape[0] == 50
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    model.save_pretrained(tmp_path / "clf")
    assert not list((tmp_path / "clf").glob("*.bin")) and not list((tmp_path / "clf").glob("*.pt"))
    loaded = Classifier.from_pretrained(tmp_path / "clf")
    assert loaded.config.class_names == list(ds.class_names)
    np.testing.assert_allclose(predict(loaded, ds.images[:50]), probs, rtol=0, atol=1e-6)


def test_corrupted_or_missing_weights(tmp_path):
    model = build_classifier("resnet10t", in_chans=1, num_classes=10)
    model.save_pretrained(tmp_path / "clf")
    (tmp_path / "clf" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupted"):
        Classifier.from_pretrained(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="train_classifier.py"):
        Classifier.from_pretrained(tmp_path / "nothing")


def test_sharded_fp16_save_stays_under_limit_and_loads(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("resnet10t", in_chans=1, num_classes=10, mean=0.2, std=0.3).eval()
    model.save_pretrained(tmp_path / "clf", dtype=torch.float16, max_shard_bytes=5 * 2**20)
    shards = sorted((tmp_path / "clf").glob("model-*.safetensors"))
    assert len(shards) >= 2 and all(p.stat().st_size < 5.1 * 2**20 for p in shards)
    loaded = Classifier.from_pretrained(tmp_path / "clf")
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(8, 1, 32, 32)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), atol=2e-3)


def test_load_classifiers_loads_each_folder_once(tmp_path):
    """Committees that share members share the loaded model; a folder named two ways is one folder."""
    for i, arch in enumerate(("resnet10t", "resnet14t")):
        torch.manual_seed(i)
        build_classifier(arch, in_chans=1, num_classes=3, class_names=("a", "b", "c")).save_pretrained(tmp_path / f"m{i}")
    loaded = {}
    first = load_classifiers([tmp_path / "m0", tmp_path / "m1"], loaded=loaded)
    again = load_classifiers([str(tmp_path / "m1"), tmp_path / "x" / ".." / "m0"], loaded=loaded)
    assert again[0] is first[1] and again[1] is first[0] and len(loaded) == 2
    assert first[0] is not first[1] and first[0].config.arch == "resnet10t" and first[1].config.arch == "resnet14t"
    fresh = load_classifiers([tmp_path / "m0"])  # no shared dict: a new model
    assert fresh[0] is not first[0]
    torch.testing.assert_close(fresh[0].state_dict(), first[0].state_dict())
    with pytest.raises(FileNotFoundError, match="missing"):
        load_classifiers([tmp_path / "nowhere"], loaded=loaded)
