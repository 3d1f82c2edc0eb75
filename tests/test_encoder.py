import torch

from dacd.encoder import DifficultyEncoder


def make(**kw):
    torch.manual_seed(0)
    return DifficultyEncoder(num_classes=5, cross_attention_dim=32, num_tokens=3, hidden_dim=64, **kw).eval()


def test_shapes_determinism_and_sensitivity():
    enc = make()
    y, s = torch.tensor([0, 1, 4]), torch.tensor([0.1, 0.5, 0.9])
    out = enc(y, s)
    assert out.shape == (3, 3, 32) and torch.isfinite(out).all()
    assert torch.equal(out, enc(y, s))
    a, b = enc(torch.tensor([2]), torch.tensor([0.1])), enc(torch.tensor([2]), torch.tensor([0.9]))
    assert (a - b).abs().max() > 1e-3  # different s -> different tokens
    c = enc(torch.tensor([3]), torch.tensor([0.1]))
    assert (a - c).abs().max() > 1e-3  # class matters too
    assert enc.null(4).shape == (4, 3, 32)


def test_linear_option_and_save_load(tmp_path):
    for kind in ("fourier", "linear"):
        enc = make(s_embedding=kind)
        enc.save_pretrained(tmp_path / kind)
        assert (tmp_path / kind / "diffusion_pytorch_model.safetensors").is_file()
        back = DifficultyEncoder.from_pretrained(tmp_path / kind).eval()
        y, s = torch.tensor([1, 2]), torch.tensor([0.3, 0.7])
        torch.testing.assert_close(back(y, s), enc(y, s))
        torch.testing.assert_close(back.null(1), enc.null(1))
        assert back.config.s_embedding == kind
