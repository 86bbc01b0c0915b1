"""What the tiny builders share: the marker file, tokenizers over byte pieces, the MoVQ and
Kandinsky UNet and the SD VAE they are made of (``farm.families.tiny`` says why they exist)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
    from transformers import CLIPTokenizer

TINY_MARKER = "farm-tiny.json"  # written beside a tiny pipeline so the farm can say it is one
EMBED_DIM = 32

# The 256 printable stand-ins GPT-2/CLIP use for raw bytes; a vocabulary of exactly these
# (plus the same with the end-of-word suffix) tokenizes any Unicode prompt, Arabic or Chinese too.


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte characters (no merges), built in memory."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    # Special tokens last (highest ids), as in real CLIP: the text encoder pools at the eos id.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # model_max_length must equal PriorTransformer.num_embeddings or padding fails.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _mark(family: str, *folders: Path) -> None:
    """Write the marker that says a folder holds a tiny random-weight pipeline."""
    marker = {"family": family, "tiny": True, "note": "random weights: images are noise"}
    for d in folders:
        (d / TINY_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _sd_vae(**extra: Any) -> AutoencoderKL:
    """A seeded tiny AutoencoderKL with four blocks: the real VAE's scale factor of 8."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=8,
        **extra,
    )


def _movq() -> VQModel:
    import torch
    from diffusers import VQModel

    torch.manual_seed(0)
    # Four blocks give the real MoVQ's scale factor of 8 (two blocks would give 2), so sizes
    # behave as with real weights: outputs are multiples of 64.
    return VQModel(
        block_out_channels=[32, 32, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )


def _kandinsky_unet(in_channels: int, addition: str, hid_proj: str) -> UNet2DConditionModel:
    """The tiny Kandinsky 2.x decoder UNet (as diffusers' tests build it), seeded.

    Args:
        in_channels: 4 latents; 9 for inpainting (+ masked latents + mask); 8 with a hint.
        addition: addition_embed_type ("image", "image_hint", "text_image").
        hid_proj: encoder_hid_dim_type ("image_proj", "text_image_proj").
    """
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        in_channels=in_channels,
        out_channels=8,  # mean and variance
        addition_embed_type=addition,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type=hid_proj,
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    )


def is_tiny(folder: str | Path) -> bool:
    """Whether ``folder`` holds a pipeline built by this module."""
    return (Path(folder) / TINY_MARKER).is_file()
