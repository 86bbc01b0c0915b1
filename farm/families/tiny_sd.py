"""Tiny Stable Diffusion 1.5 and SDXL refiner pipelines."""

from __future__ import annotations

from pathlib import Path

from farm.families.tiny_common import (
    EMBED_DIM,
    _clip_tokenizer,
    _mark,
    _sd_vae,
)


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
