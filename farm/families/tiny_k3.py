"""The tiny Kandinsky 3 pipeline (one stage: T5 text encoder, UNet, MoVQ)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from farm.families.tiny_common import (
    _mark,
    _movq,
)

if TYPE_CHECKING:
    from transformers import T5TokenizerFast


def _t5_tokenizer() -> T5TokenizerFast:
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
