"""Tiny random-weight pipelines for every family's parts, built locally for tests and the demo.

No model hub is reachable here, so the farm builds its own pipelines the way diffusers' test
suite builds "dummy components", saves them with ``save_pretrained`` and loads them back with
``from_pretrained(folder)`` exactly as it loads real weights. Everything is seeded: two builds
give identical files. The pictures they render are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def _clip_tokenizer():
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


def _sd_vae(**extra):
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


def _prior_components() -> dict:
    import torch
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    try:  # transformers 5 without torchvision: name the PIL processor directly, no warning
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=EMBED_DIM,
            projection_dim=EMBED_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
        )
    )
    torch.manual_seed(0)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED_DIM, num_layers=1
    )
    # clip_std is zero-initialised; the prior would then return all-zero embeddings.
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED_DIM,
            image_size=224,
            projection_dim=EMBED_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=14,
        )
    )
    image_processor = CLIPImageProcessor(
        crop_size=224,
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
        size=224,
    )
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return {
        "prior": prior,
        "image_encoder": image_encoder,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "image_processor": image_processor,
    }


def _movq():
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


def _kandinsky_unet(in_channels: int, addition: str, hid_proj: str):
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


def k22_scheduler():
    """The DDPM scheduler the real 2.2 decoder ships (these settings)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )


def _decoder_components(in_channels: int = 4) -> dict:
    unet = _kandinsky_unet(in_channels, "image", "image_proj")
    return {"unet": unet, "scheduler": k22_scheduler(), "movq": _movq()}


def build_k22_prior(out: Path) -> None:
    """The tiny Kandinsky 2.2 prior (also serves as the 2.1 prior: the same components)."""
    from farm.families.loading import quiet

    quiet()  # before the pipeline imports, which log about torchvision
    from diffusers import KandinskyV22PriorPipeline

    KandinskyV22PriorPipeline(**_prior_components()).save_pretrained(out)
    _mark("kandinsky-2.2", out)


def _prior_card(out: Path) -> None:
    """A model card naming the prior, as the hub's decoder repos have: diffusers' AutoPipelines
    read it to build the combined (prior + decoder) pipelines from a decoder folder."""
    prior = Path(out).parent / "prior"
    if not is_tiny(prior):
        build_k22_prior(prior)
    (Path(out) / "README.md").write_text(
        f"---\nprior:\n- {prior.resolve()}\n---\n", encoding="utf-8"
    )


def build_k22_decoder(out: Path) -> None:
    """The tiny Kandinsky 2.2 decoder (UNet + MoVQ), with a card naming the tiny prior."""
    from farm.families.loading import quiet

    quiet()
    from diffusers import KandinskyV22Pipeline

    KandinskyV22Pipeline(**_decoder_components()).save_pretrained(out)
    _mark("kandinsky-2.2", out)
    _prior_card(out)


def build_k22_inpaint(out: Path) -> None:
    """The tiny Kandinsky 2.2 inpainting decoder (9 input channels), with a card naming the prior."""
    from farm.families.loading import quiet

    quiet()
    from diffusers import KandinskyV22InpaintPipeline

    KandinskyV22InpaintPipeline(**_decoder_components(in_channels=9)).save_pretrained(out)
    _mark("kandinsky-2.2", out)
    _prior_card(out)


def is_tiny(folder: str | Path) -> bool:
    """Whether ``folder`` holds a pipeline built by this module."""
    return (Path(folder) / TINY_MARKER).is_file()


def _t5_tokenizer():
    """A T5 tokenizer over ASCII pieces (Unigram + Metaspace, as T5's sentencepiece), offline."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in string.ascii_letters]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=128,
    )


def build_k3(out: Path) -> None:
    """Build and save a tiny Kandinsky 3 pipeline (T5 encoder + Kandinsky3UNet + MoVQ) in ``out``."""
    from farm.families.loading import quiet

    quiet()
    import torch
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet
    from transformers import T5Config, T5EncoderModel

    out = Path(out)
    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )  # fmt: skip
    torch.manual_seed(0)
    unet = Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32,
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        thresholding=False,
    )
    pipe = Kandinsky3Pipeline(
        unet=unet, scheduler=scheduler, movq=_movq(), text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.save_pretrained(out)
    _mark("kandinsky-3", out)


def _xlmr_tokenizer():
    """An XLM-RoBERTa tokenizer over ASCII pieces (Unigram + Metaspace), offline."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in string.ascii_letters]
    pieces += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=77,  # the 2.1 decoder pads prompts to 77
    )


def _k21_components(in_channels: int) -> dict:
    import torch
    from diffusers import DDIMScheduler
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    tokenizer = _xlmr_tokenizer()
    torch.manual_seed(0)
    text_encoder = MultilingualCLIP(
        MCLIPConfig(
            numDims=EMBED_DIM, transformerDimensions=EMBED_DIM, hidden_size=EMBED_DIM,
            intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2,
            max_position_embeddings=80,
        )
    ).eval()  # fmt: skip
    unet = _kandinsky_unet(in_channels, "text_image", "text_image_proj")
    scheduler = DDIMScheduler(  # the 2.1 decoder ships DDIM
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )
    return {
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "movq": _movq(),
    }


def build_k21_decoder(out: Path) -> None:
    """The tiny Kandinsky 2.1 decoder (multilingual text encoder + UNet + MoVQ, DDIM)."""
    from farm.families.loading import quiet

    quiet()
    from diffusers import KandinskyPipeline

    KandinskyPipeline(**_k21_components(4)).save_pretrained(out)
    _mark("kandinsky-2.1", out)


def build_k21_inpaint(out: Path) -> None:
    """The tiny Kandinsky 2.1 inpainting decoder."""
    from farm.families.loading import quiet

    quiet()
    from diffusers import KandinskyInpaintPipeline

    KandinskyInpaintPipeline(**_k21_components(9)).save_pretrained(out)
    _mark("kandinsky-2.1", out)


def build_sd15(out: Path) -> None:
    """Build and save a tiny Stable Diffusion 1.5-style pipeline (CLIP text encoder, UNet,
    AutoencoderKL with the real scale factor 8, PNDM) in ``out``; no safety checker."""
    from farm.families.loading import quiet

    quiet()
    import torch
    from diffusers import (
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        norm_num_groups=8,
    )
    vae = _sd_vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=EMBED_DIM, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        )
    )  # fmt: skip
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out)
    _mark("sd-1.5", out)


def build_controlnet(out: Path) -> None:
    """The tiny Kandinsky 2.2 ControlNet (depth) decoder: a hint-conditioned UNet + MoVQ."""
    from farm.families.loading import quiet

    quiet()
    from diffusers import DDPMScheduler, KandinskyV22ControlnetPipeline

    unet = _kandinsky_unet(8, "image_hint", "image_proj")
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, steps_offset=1, prediction_type="epsilon", thresholding=False,
    )  # fmt: skip
    KandinskyV22ControlnetPipeline(unet=unet, scheduler=scheduler, movq=_movq()).save_pretrained(
        out
    )
    _mark("kandinsky-2.2", out)


def build_depth(out: Path) -> None:
    """A tiny DPT depth estimator (transformers), for ControlNet hints."""
    from farm.families.loading import quiet

    quiet()
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    depth = DPTForDepthEstimation(
        DPTConfig(
            image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=2,
            backbone_out_indices=[0, 1], num_attention_heads=4, intermediate_size=37,
            neck_hidden_sizes=[16, 32], fusion_hidden_size=16, reassemble_factors=[4, 2],
            is_hybrid=False, head_in_index=-1,
        )
    ).eval()  # fmt: skip
    depth.save_pretrained(out)
    DPTImageProcessor(
        size={"height": 32, "width": 32}, keep_aspect_ratio=False, do_resize=True, do_normalize=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    ).save_pretrained(out)  # fmt: skip
    _mark("kandinsky-2.2", out)


def build_sdxl_refiner(out: Path) -> None:
    """Build and save a tiny SDXL refiner (img2img: second text encoder only, aesthetic score
    conditioning, AutoencoderKL scale 8, Euler) in ``out``."""
    from farm.families.loading import quiet

    quiet()
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = Path(out)
    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        # 5 time ids (with the aesthetic score) x 8 + the 32-wide pooled text embedding
        projection_class_embeddings_input_dim=72, cross_attention_dim=EMBED_DIM, norm_num_groups=8,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )  # fmt: skip
    vae = _sd_vae(sample_size=128)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=EMBED_DIM, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=len(tokenizer), hidden_act="gelu", projection_dim=EMBED_DIM,
        )
    )  # fmt: skip
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=True,
    )  # fmt: skip
    pipe.save_pretrained(out)
    _mark("sdxl-refiner", out)
