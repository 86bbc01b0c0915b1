"""Tiny Kandinsky 2.1 and 2.2 pipelines: the prior, the decoders (text-to-image, inpaint), the
ControlNet decoder and its depth estimator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.families.tiny_common import (
    EMBED_DIM,
    _clip_tokenizer,
    _kandinsky_unet,
    _mark,
    _movq,
    is_tiny,
)

if TYPE_CHECKING:
    from diffusers import DDPMScheduler
    from transformers import XLMRobertaTokenizerFast


def _prior_components() -> dict[str, Any]:
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


def k22_scheduler() -> DDPMScheduler:
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


def _decoder_components(in_channels: int = 4) -> dict[str, Any]:
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


def _xlmr_tokenizer() -> XLMRobertaTokenizerFast:
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


def _k21_components(in_channels: int) -> dict[str, Any]:
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
