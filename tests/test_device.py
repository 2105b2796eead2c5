"""Conditions, random masks and dropout masks are made on the batch's device, drawn with a generator
of the device they are drawn on — checked without a GPU.

Inside :func:`on_batch_device` the CPU plays the accelerator and ``meta`` plays the device a forgotten
``device=`` falls back to: torch's default device is ``meta``, so a tensor made without an explicit
device (the bug: ``torch.zeros(...)`` beside a CUDA batch) holds no data and fails when it meets the
batch or is read, and :class:`GeneratorDeviceCheck` fails, as CUDA does, on a draw whose generator
lives on another device than the tensor it fills. The batch keeps real values, so the code that reads
values (mask shapes, block matching) runs too, and its results are compared with a plain run.
Not caught: an explicit ``.cpu()`` / ``device="cpu"`` in the code under test.

FakeTensorMode was tried first. It does raise ``FakeTensorDeviceMismatchError`` when a CPU tensor meets
a fake ``cuda`` one, but on a CPU-only build (torch 2.13) fake cuda tensors fail in every method that
takes a device guard (``~``, ``.contiguous()``, indexing, ``.to("cuda")``), ``torch.Generator("cuda")``
cannot be made, and ``.item()`` has no value, so it cannot run this code.
"""

import contextlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tests._tiny import tiny_unet
from tft2v.data.conditions import CONDITION_NAMES, extract_conditions, masked_video, random_masks
from tft2v.data.conditions_depth import DepthEstimator
from tft2v.data.toy import ToyWorld, generate, to_pixels
from tft2v.errors import TFT2VError
from tft2v.models.conditions import CONDITION_CHANNELS, condition_dropout_masks

DROPOUT = dict(p=0.4, p_all_zero=0.1, p_all_keep=0.1)


class GeneratorDeviceCheck(TorchDispatchMode):
    """Fail like CUDA on a random op whose generator is on another device than the tensor it fills
    (CPU builds skip this check for meta tensors, which is the case the tests need)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        generator = kwargs.get("generator")
        if generator is not None:
            target = kwargs.get("device") or next(t.device for t in tree_leaves(args) if isinstance(t, torch.Tensor))
            kind = torch.device(target).type
            if kind != generator.device.type:
                raise RuntimeError(f"Expected a '{kind}' device type for generator but found '{generator.device.type}'")
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_batch_device():
    """Run code on a CPU batch with ``meta`` as the default device and CUDA's generator check."""
    with torch.device("meta"), GeneratorDeviceCheck():
        yield


@pytest.fixture(scope="module")
def video():
    data = generate("videos", 2, seed=4, world=ToyWorld(frames=4))
    return torch.stack([to_pixels(data.frames[i]) for i in range(2)])  # (2, 3, 4, 32, 32) on the CPU


@pytest.fixture(scope="module")
def depth():
    net = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        net.weight.fill_(40 / 3)
        net.bias.fill_(40.0)
    return DepthEstimator(net)


def test_the_harness_catches_a_forgotten_device(video):
    with on_batch_device(), pytest.raises(RuntimeError, match="device"):
        video * torch.ones(video.shape[-1])  # made without device=: lands on meta
    with on_batch_device(), pytest.raises(RuntimeError, match="device type for generator"):
        torch.rand(3, generator=torch.Generator(device="cpu"))  # the original bug's error, on meta


def test_every_condition_is_made_on_the_batch_device(video, depth):
    expected = extract_conditions(video, CONDITION_NAMES, torch.Generator().manual_seed(1), depth)
    generator = torch.Generator().manual_seed(1)
    with on_batch_device():
        got = extract_conditions(video, CONDITION_NAMES, generator, depth)
        luma = extract_conditions(video, ["depth"], depth_model="luminance")["depth"]
    assert luma.device == video.device
    for name in CONDITION_NAMES:
        assert got[name].device == video.device and torch.equal(got[name], expected[name]), name


def test_random_masks_draw_with_the_generator_on_its_device():
    expected = random_masks(6, 24, 40, torch.Generator().manual_seed(3))
    seeded = torch.Generator().manual_seed(3)
    with on_batch_device():
        masks = random_masks(6, 24, 40, seeded)  # device: the generator's
        default = random_masks(2, 8, 8)  # no generator: the fixed CPU seed
    assert masks.device.type == "cpu" and torch.equal(masks, expected)
    assert default.device.type == "cpu"
    # Shapes drawn on the generator's device, mask tensors made on the one asked for.
    elsewhere = random_masks(6, 24, 40, torch.Generator().manual_seed(3), device="meta")
    assert elsewhere.device.type == "meta" and elsewhere.shape == expected.shape


def test_masked_video_refuses_a_mask_on_another_device(video):
    mask = torch.zeros(video.shape[0], 1, *video.shape[-2:], device="meta")
    with pytest.raises(TFT2VError, match="mask is on meta but the video is on cpu"):
        masked_video(video, mask)


def test_dropout_masks_default_to_the_generator_device():
    names = ["sketch", "depth"]
    expected = condition_dropout_masks(64, names, **DROPOUT, generator=torch.Generator().manual_seed(0), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with on_batch_device():
        got = condition_dropout_masks(64, names, **DROPOUT, generator=generator)
        unseeded = condition_dropout_masks(4, names, **DROPOUT)
    for name in names:
        assert got[name].device.type == "cpu" and torch.equal(got[name], expected[name])
        assert unseeded[name].device.type == "cpu"


def test_dropout_masks_refuse_a_generator_of_another_device():
    with pytest.raises(TFT2VError, match="generator is on cpu but the masks are asked for on meta"):
        condition_dropout_masks(4, ["sketch"], **DROPOUT, generator=torch.Generator(), device="meta")


def test_depth_estimator_is_a_module_called_on_the_video_device(video):
    est = DepthEstimator(nn.Conv2d(3, 1, 1))
    assert isinstance(est, nn.Module) and est.device.type == "cpu"
    assert est.to("meta") is est and est.device.type == "meta"  # .to moves the network
    with pytest.raises(TFT2VError, match="depth model is on meta but the video is on cpu"):
        est(video)


def test_unet_step_with_all_conditions_on_the_batch_device(video):
    """A training step's model side: conditions, dropout masks from the step generator, a forward."""
    unet = tiny_unet(conditions=tuple(CONDITION_CHANNELS), condition_pixel_size=(32, 32))
    b, f = video.shape[0], video.shape[2]
    g = torch.Generator().manual_seed(5)
    x, text, image = torch.randn(b, 4, f, 4, 4, generator=g), torch.randn(b, 5, 32, generator=g), torch.randn(b, 24)
    t = torch.tensor([10, 700])

    def step(generator):
        conds = extract_conditions(video, CONDITION_NAMES, generator, "luminance")
        masks = unet.sample_dropout_masks(b, [*conds, "text", "image"], generator)
        return unet(x, t, text, image_embeds=image, conditions=conds, dropout_masks=masks)

    with torch.no_grad():
        expected = step(torch.Generator().manual_seed(7))
        generator = torch.Generator().manual_seed(7)
        with on_batch_device():
            got = step(generator)
    assert got.device == video.device and torch.equal(got, expected)


def test_compositional_recipe_step_on_the_batch_device(video, depth):
    """The whole training step of the compositional recipe: posterior, timesteps, noise, text/image
    dropout, all six conditions with the per-sample inpainting masks, condition dropout, loss."""
    from tft2v.autoencoder import build_autoencoder
    from tft2v.config import RecipeConfig
    from tft2v.diffusion import ScheduleConfig, build_training_scheduler
    from tft2v.encoders import build_encoder
    from tft2v.train.recipe import Recipe, sample_generators

    names = tuple(CONDITION_CHANNELS)
    # pixel space: the 32x32 latent is the frame, so the condition encoders pool from 8x that
    unet = tiny_unet(in_channels=3, out_channels=3, context_dim=16, image_embed_dim=32, conditions=names,
                     condition_pixel_size=(256, 256))
    encoder = build_encoder("toy", text_dim=16, image_dim=32, max_length=4)
    schedule = ScheduleConfig()
    recipe = Recipe(RecipeConfig(conditions=names, text_dropout=0.5, image_token_dropout=0.5), schedule, encoder,
                    build_autoencoder("none"), build_training_scheduler(schedule), depth_model=depth)
    batch = {"pixels": video, "cond_frame": video[:, :, 2], "caption": ["a red circle", ""],
             "has_text": torch.tensor([True, False]), "key": ["a", "b"]}

    def step():
        gens = sample_generators(3, 7, "video", 0, 2, device=video.device)
        return recipe.branch_loss(unet, unet, batch, "video", gens, video.device)[0]

    with torch.no_grad():
        expected = step()
        with on_batch_device():
            got = step()
    assert got.device == video.device and torch.equal(got, expected)
