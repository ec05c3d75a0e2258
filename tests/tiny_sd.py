"""Tiny Stable Diffusion 1.x / 2.x (v-prediction) / SDXL pipelines built from config objects.

Nothing is downloaded: weights are random (seeded), the CLIP tokenizer files are written here,
and everything is saved with safetensors in the diffusers folder layout, so tests load them
through the same `SDFamily().load(folder)` / `SDXLFamily().load(folder)` that users run.

Sizes: latents 16x16 with a 2-level VAE (scale factor 2) -> 32 px images; UNet widths (32, 64).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
VOCAB_SIZE = 1000  # text encoder embedding rows; the written vocab is smaller

# Words whose left-to-right merges give the tokenizer some multi-character tokens,
# so prompts are not always one token per letter.
_WORDS = ("a the of and in with painting drawing portrait landscape style art red blue green "
          "cat dog tree house sky sea girl boy photo sketch ink oil watercolor").split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) for a small CLIP-style BPE tokenizer covering every byte."""
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(vocab_list)
    for word in _WORDS:
        # Merge left to right: "c a" -> "ca", "ca t</w>" -> "cat</w>", …
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merged = current + nxt
            if merged not in seen:
                merges.append(f"{current} {nxt}")
                vocab_list.append(merged)
                seen.add(merged)
            current = merged
    vocab_list += [BOS, EOS]
    assert len(vocab_list) <= VOCAB_SIZE
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_tokenizer(folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_files()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": BOS,
         "eos_token": EOS, "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}), encoding="utf-8")
    return folder


def _text_config(*, hidden_act: str, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act=hidden_act,
                          projection_dim=projection_dim, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                          pad_token_id=vocab[EOS], layer_norm_eps=1e-5)


def _vae(scaling_factor: float, force_upcast: bool = False):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=scaling_factor,
                         force_upcast=force_upcast)


def _write_index(folder: Path, index: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def make_tiny_sd(folder: Path, version: str = "1") -> Path:
    """A tiny StableDiffusionPipeline folder. version "1": epsilon, PNDM scheduler, quick_gelu text
    encoder (like 1.x); "2v": v-prediction, DDIM scheduler, gelu text encoder, linear projections (like 2.x 768)."""
    import torch
    from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if version not in ("1", "2v"):
        raise ValueError(f"version must be '1' or '2v', got {version!r}")
    folder = Path(folder)
    v2 = version == "2v"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4) if v2 else 8, use_linear_projection=v2,
        norm_num_groups=32)
    vae = _vae(0.18215)
    text_encoder = CLIPTextModel(_text_config(hidden_act="gelu" if v2 else "quick_gelu"))
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  set_alpha_to_one=False, steps_offset=1)
    if v2:
        scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction", **common)
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, prediction_type="epsilon", **common)

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)  # fail here, not in a test
    _write_index(folder, {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", type(scheduler).__name__], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "image_encoder": [None, None]})
    return folder


def make_tiny_sdxl(folder: Path) -> Path:
    """A tiny StableDiffusionXLPipeline folder: CLIPTextModel + CLIPTextModelWithProjection, Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(0)
    time_embed_dim = 8
    projection_dim = 32
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,  # both text encoders' hidden sizes, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=projection_dim + 6 * time_embed_dim, norm_num_groups=32)
    vae = _vae(0.13025, force_upcast=True)
    text_encoder = CLIPTextModel(_text_config(hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=projection_dim))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    _write_index(folder, {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": True, "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    return folder
