"""Tiny Stable Diffusion 3 / 3.5 and FLUX.1 (dev / schnell) pipelines built from config objects.

Nothing is downloaded: weights are random (seeded); the CLIP tokenizer files come from tiny_sd,
the T5 tokenizer is a small Unigram vocabulary written here; everything is saved with safetensors
in the diffusers folder layout, so tests load them through the same family `load(folder)` users run.

Sizes: a 2-level VAE (scale factor 2) with 4 latent channels -> 32 px pictures are 16x16 latents.
SD3: patch 2 -> 64 image tokens; FLUX: 2x2 packing -> 64 tokens of 16 channels. Text: two CLIPs
of width 16 (SD3) / one (FLUX), a 2-layer T5 of width 48 and at most 16 T5 tokens.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_sd import BOS, EOS, MAX_LENGTH, VOCAB_SIZE, tokenizer_files, write_tokenizer  # noqa: E402

T5_WIDTH = 48
T5_MAX_LENGTH = 16  # the tokenizer's model_max_length: the families use min(pipeline default, this)
CLIP_WIDTH = 16
# A few words and their pieces: prompts split into real pieces, not only letters.
_T5_WORDS = ("a the of and in with painting drawing portrait landscape style art red blue green cat dog "
             "tree house sky sea photo sketch ink oil watercolor square zq mystyle").split()


def t5_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) of a tiny T5 Unigram vocabulary: T5's three specials first
    (<pad>=0, </s>=1, <unk>=2), then "▁", whole words, and single characters as the fallback."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for word in _T5_WORDS:
        for piece, score in (("▁" + word, -3.0 - 0.1 * len(word)),):
            if piece not in seen:
                pieces.append((piece, score))
                seen.add(piece)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-":
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                pieces.append((piece, -8.0))
                seen.add(piece)
    return pieces


def write_t5_tokenizer(folder: Path, *, max_length: int = T5_MAX_LENGTH) -> Path:
    """A T5TokenizerFast (Unigram, as T5's sentencepiece model is) saved as tokenizer.json."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    tok = T5TokenizerFast(vocab=t5_vocab(), extra_ids=0, model_max_length=max_length)
    tok.save_pretrained(folder)
    T5TokenizerFast.from_pretrained(folder, local_files_only=True)  # fail here, not in a test
    return folder


def t5_vocab_size() -> int:
    return len(t5_vocab())


def _clip_config(*, hidden_act: str = "quick_gelu", projection_dim: int = CLIP_WIDTH):
    from transformers import CLIPTextConfig

    vocab, _ = tokenizer_files()
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=MAX_LENGTH, hidden_act=hidden_act,
                          projection_dim=projection_dim, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                          pad_token_id=vocab[EOS], layer_norm_eps=1e-5)


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=t5_vocab_size(), d_model=T5_WIDTH, d_ff=64, d_kv=8, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))


def _vae(*, scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    # SD3's and FLUX's VAEs: no quant convs, a shift before the scale.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=32, sample_size=32, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False)


def _write_index(folder: Path, index: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def make_tiny_sd3(folder: Path, version: str = "3") -> Path:
    """A tiny StableDiffusion3Pipeline folder: version "3" (SD3 medium layout) or "3.5" (a dual
    attention layer and RMS q/k norms, as SD3.5 medium)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    if version not in ("3", "3.5"):
        raise ValueError(f"version must be '3' or '3.5', got {version!r}")
    folder = Path(folder)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_WIDTH, pos_embed_max_size=16,
        dual_attention_layers=(0,) if version == "3.5" else (), qk_norm="rms_norm" if version == "3.5" else None)
    vae = _vae(scaling_factor=1.5305, shift_factor=0.0609)
    te1 = CLIPTextModelWithProjection(_clip_config(hidden_act="quick_gelu"))
    te2 = CLIPTextModelWithProjection(_clip_config(hidden_act="gelu"))
    te3 = _t5()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    te1.save_pretrained(folder / "text_encoder", safe_serialization=True)
    te2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    te3.save_pretrained(folder / "text_encoder_3", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    write_t5_tokenizer(folder / "tokenizer_3")
    _write_index(folder, {
        "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None], "feature_extractor": [None, None]})
    return folder


def make_tiny_flux(folder: Path, variant: str = "dev") -> Path:
    """A tiny FluxPipeline folder: "dev" (guidance embedding, dynamic shifting) or "schnell"
    (neither, as FLUX.1-schnell's files say)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    if variant not in ("dev", "schnell"):
        raise ValueError(f"variant must be 'dev' or 'schnell', got {variant!r}")
    folder = Path(folder)
    dev = variant == "dev"
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=dev, axes_dims_rope=(2, 2, 4))
    vae = _vae(scaling_factor=0.3611, shift_factor=0.1159)
    te1 = CLIPTextModel(_clip_config(hidden_act="quick_gelu"))
    te2 = _t5()
    if dev:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    te1.save_pretrained(folder / "text_encoder", safe_serialization=True)
    te2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    write_tokenizer(folder / "tokenizer")
    write_t5_tokenizer(folder / "tokenizer_2")
    _write_index(folder, {
        "_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None], "feature_extractor": [None, None]})
    return folder


# --- reading kohya LoRA files the way ComfyUI does, for the tests ------------------------------

def kohya_weight_names(state: dict, prefix: str, *, text_model: bool = False) -> dict[str, str]:
    """kohya name -> weight key of `state`, as ComfyUI names a model's layers: the original-layout
    module path (for a transformer: its original single-file keys) with `_` for `.`; CLIP text
    encoders under `text_model.…` whether or not transformers nests them so."""
    out = {}
    for key in state:
        if not key.endswith(".weight"):
            continue
        path = key[: -len(".weight")]
        if text_model and not path.startswith("text_model."):
            path = "text_model." + path
        out[prefix + path.replace(".", "_")] = key
    return out


def apply_kohya(state: dict, lora: dict, names: dict[str, str], prefix: str) -> set[str]:
    """Add each `prefix…` LoRA of a kohya file to the weight it names in `state`, in place, as
    ComfyUI applies it: W + up @ down · alpha / rank, then with a `dora_scale` each output row
    rescaled to that magnitude. Returns the names applied; KeyError for a name with no weight."""
    import torch

    applied = set()
    for key in lora:
        if not (key.startswith(prefix) and key.endswith(".lora_down.weight")):
            continue
        name = key[: -len(".lora_down.weight")]
        target = names[name]  # KeyError: the file names a layer the model does not have
        down, up = lora[name + ".lora_down.weight"].float(), lora[name + ".lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(lora[name + ".alpha"]) if name + ".alpha" in lora else float(rank)
        weight = state[target].float() + (up.flatten(1) @ down.flatten(1)).reshape(state[target].shape) * alpha / rank
        scale = lora.get(name + ".dora_scale")
        if scale is not None:
            norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (weight.ndim - 1)))
            weight = weight * (scale.float().reshape(norm.shape) / norm)
        state[target] = weight.to(state[target].dtype)
        applied.add(name)
    return applied


# --- single files, as the releases and ComfyUI keep them -----------------------------------------

def _save(path: Path, tensors: dict, dtype=None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
           for k, v in tensors.items()}
    save_file(out, str(path))
    return path


def _text_state(module) -> dict:
    state = dict(module.state_dict())
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; the files keep one
    return state


def write_single_files(folder: Path, models: Path, *, all_in_one: bool = False, fp8: bool = False,
                       name: str | None = None) -> Path:
    """The tiny pipeline at `folder` as single files under a ComfyUI-like `models` folder:
    SD3 as models/checkpoints/<name> (transformer under model.diffusion_model. with the VAE; with
    `all_in_one` the text encoders inside too, as sd3_medium_incl_clips_t5xxlfp16.safetensors has
    them, otherwise models/text_encoders/clip_l|clip_g|t5xxl_fp16.safetensors); FLUX as
    models/diffusion_models/<name> (transformer only, no prefix), models/vae/ae.safetensors and
    models/text_encoders/clip_l|t5xxl_fp16.safetensors. `fp8`: the transformer in float8. Returns
    the transformer file."""
    import torch
    from diffusers import AutoencoderKL

    from transferstudio.backbones import mmdit_layout as layout
    from transferstudio.backbones.sdfiles.original_layout import VAE_PREFIX, vae_to_original

    folder, models = Path(folder), Path(models)
    index = json.loads((folder / "model_index.json").read_text())
    flux = index["_class_name"] == "FluxPipeline"
    import diffusers
    import transformers

    cls = diffusers.FluxTransformer2DModel if flux else diffusers.SD3Transformer2DModel
    state = cls.from_pretrained(folder / "transformer").state_dict()
    transformer = layout.to_original(state, layout.layers_of("flux" if flux else "sd3", layout.shapes_of(state)))
    vae = vae_to_original(AutoencoderKL.from_pretrained(folder / "vae"))
    fp8_dtype = torch.float8_e4m3fn if fp8 else None
    encoders = {}
    for sub in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if (folder / sub).is_dir():
            encoders[sub] = getattr(transformers, index[sub][1]).from_pretrained(folder / sub)
    if flux:
        main = _save(models / "diffusion_models" / (name or "flux-tiny.safetensors"), transformer, fp8_dtype)
        _save(models / "vae" / "ae.safetensors", {k[len(VAE_PREFIX):]: v for k, v in vae.items()})
        _save(models / "text_encoders" / "clip_l.safetensors", _text_state(encoders["text_encoder"]))
        _save(models / "text_encoders" / "t5xxl_fp16.safetensors", _text_state(encoders["text_encoder_2"]))
        return main
    tensors = {"model.diffusion_model." + k: v for k, v in transformer.items()}
    if fp8_dtype is not None:
        tensors = {k: v.to(fp8_dtype) for k, v in tensors.items()}
    tensors.update(vae)
    names = {"text_encoder": ("clip_l", "clip_l.safetensors"), "text_encoder_2": ("clip_g", "clip_g.safetensors"),
             "text_encoder_3": ("t5xxl", "t5xxl_fp16.safetensors")}
    for sub, (inside, file_name) in names.items():
        if all_in_one:
            tensors.update({f"text_encoders.{inside}.transformer.{k}": v for k, v in _text_state(encoders[sub]).items()})
        else:
            _save(models / "text_encoders" / file_name, _text_state(encoders[sub]))
    return _save(models / "checkpoints" / (name or "sd3-tiny.safetensors"), tensors)


def loading_files(resources: Path, folder: Path, variant: str) -> Path:
    """resources/loading/<variant>/ for the tiny model at `folder` (its configs and tokenizers)."""
    from transferstudio.backbones.sdfiles.flow_file import write_loading_files

    return write_loading_files(folder, Path(resources) / "loading" / variant)
