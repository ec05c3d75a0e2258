"""Write the loading files of SD3 / SD3.5 and FLUX.1 single files: resources/loading/<variant>/.

A single transformer file (and ComfyUI's text encoder and VAE files) holds weights only; to build
the diffusers models around them, loading needs each component's config, the scheduler config,
the CLIP tokenizers and a model_index.json. They are written here from the published
architectures, one config object per component, so every number can be read and checked:

- SD3 medium (`SD3Transformer2DModel`): 24 MMDiT blocks, 24 heads × 64 (width 1536), T5 tokens
  projected from 4096, pooled CLIP-L + CLIP-G vector of 768 + 1280 = 2048, a 192 × 192 grid of
  position embeddings; SD3.5 medium: dual attention (a second image self-attention) in blocks
  0–12, RMS q/k norms, a 384 × 384 grid; SD3.5 large: 38 blocks × 38 heads (width 2432), RMS q/k
  norms. All: 16 latent channels, patch 2, 128 × 128 latents (1024 px).
- FLUX.1 (`FluxTransformer2DModel`): 19 double-stream and 38 single-stream blocks, 24 heads ×
  128 (width 3072), packed 2 × 2 latents (64 channels), T5 4096, pooled CLIP-L 768, RoPE axes
  16/56/56; dev takes a guidance input (`guidance_embeds`), schnell does not.
- VAEs: the SD VAE layout (128/256/512/512, two resnets per level) with 16 latent channels and
  no quant convs; SD3 scale 1.5305, shift 0.0609; FLUX scale 0.3611, shift 0.1159.
- Text encoders: OpenAI CLIP ViT-L/14's (768 wide, 12 layers, quick-GELU), OpenCLIP ViT-bigG's
  (1280 wide, 32 layers, GELU, projection 1280), and T5 v1.1 XXL's encoder (d_model 4096, d_ff
  10240 gated-GELU, 64 heads × 64, 24 layers, vocabulary 32128).
- Schedulers: flow-matching Euler; SD3 shift 3.0; FLUX dev the resolution-dependent shift
  (0.5 at 256 image tokens to 1.15 at 4096), schnell shift 1.0 without it.
- CLIP tokenizers: the vocabulary and merges already bundled for SDXL (open_clip's BPE, see
  build_tokenizers.py). CLIP-L pads with <|endoftext|> (SD3's `tokenizer`, FLUX's), OpenCLIP
  bigG with "!" (SD3's `tokenizer_2`, as SDXL's second encoder and ComfyUI's clip_g pad with 0).
  T5's tokenizer is not written: none can be built offline and lawfully shipped here; loading
  finds one on the user's disk (flow_file.find_t5_tokenizer).

    python -m transferstudio.devtools.write_flow_loading [--out resources/loading]

tests/test_flow_loading_files.py builds every config on the meta device and checks the
parameter counts against the published sizes.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- text encoders ------------------------------------------------------------------------------
CLIP_VOCAB = 49408
BOS, EOS = 49406, 49407  # <|startoftext|>, <|endoftext|>
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")  # OpenAI CLIP ViT-L/14's text tower
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")  # OpenCLIP ViT-bigG/14's text tower
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              num_decoder_layers=24, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
              relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.1,
              is_encoder_decoder=True, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)  # google/t5-v1_1-xxl (its encoder is what SD3 and FLUX use)

# --- VAEs ---------------------------------------------------------------------------------------
_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024, force_upcast=True,
            use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)
SD3_VAE = dict(_VAE, scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE = dict(_VAE, scaling_factor=0.3611, shift_factor=0.1159)

# --- transformers -------------------------------------------------------------------------------
_SD3 = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
            joint_attention_dim=4096, pooled_projection_dim=CLIP_L["hidden_size"] + CLIP_G["hidden_size"])
SD3_MEDIUM = dict(_SD3, num_layers=24, num_attention_heads=24, caption_projection_dim=24 * 64,
                  pos_embed_max_size=192)
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35_LARGE = dict(_SD3, num_layers=38, num_attention_heads=38, caption_projection_dim=38 * 64,
                  pos_embed_max_size=192, qk_norm="rms_norm")
_FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=CLIP_L["hidden_size"],
             axes_dims_rope=(16, 56, 56))
FLUX_DEV = dict(_FLUX, guidance_embeds=True)
FLUX_SCHNELL = dict(_FLUX, guidance_embeds=False)

# --- schedulers ---------------------------------------------------------------------------------
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

PAD_CLIP_L = "<|endoftext|>"
PAD_OPENCLIP = "!"


@dataclass(frozen=True)
class Encoder:
    cls: str  # transformers class
    config: dict[str, Any]


@dataclass(frozen=True)
class Variant:
    pipeline: str
    transformer_class: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    encoders: dict[str, Encoder]  # pipeline name -> encoder
    clip_pads: dict[str, str]  # CLIP tokenizer folder -> pad token
    t5_tokenizer: str  # the pipeline's name of the T5 tokenizer (not written)
    extra_index: dict[str, Any] = field(default_factory=dict)


_SD3_ENCODERS = {"text_encoder": Encoder("CLIPTextModelWithProjection", CLIP_L),
                 "text_encoder_2": Encoder("CLIPTextModelWithProjection", CLIP_G),
                 "text_encoder_3": Encoder("T5EncoderModel", T5_XXL)}
_FLUX_ENCODERS = {"text_encoder": Encoder("CLIPTextModel", CLIP_L),
                  "text_encoder_2": Encoder("T5EncoderModel", T5_XXL)}
_SD3_PADS = {"tokenizer": PAD_CLIP_L, "tokenizer_2": PAD_OPENCLIP}


def _sd3(transformer: dict[str, Any]) -> Variant:
    return Variant("StableDiffusion3Pipeline", "SD3Transformer2DModel", transformer, SD3_VAE, SD3_SCHEDULER,
                   _SD3_ENCODERS, _SD3_PADS, "tokenizer_3",
                   {"image_encoder": [None, None], "feature_extractor": [None, None]})


def _flux(transformer: dict[str, Any], scheduler: dict[str, Any]) -> Variant:
    return Variant("FluxPipeline", "FluxTransformer2DModel", transformer, FLUX_VAE, scheduler, _FLUX_ENCODERS,
                   {"tokenizer": PAD_CLIP_L}, "tokenizer_2",
                   {"image_encoder": [None, None], "feature_extractor": [None, None]})


VARIANTS: dict[str, Variant] = {
    "sd3-medium": _sd3(SD3_MEDIUM),
    "sd3.5-medium": _sd3(SD35_MEDIUM),
    "sd3.5-large": _sd3(SD35_LARGE),
    "flux-dev": _flux(FLUX_DEV, FLUX_DEV_SCHEDULER),
    "flux-schnell": _flux(FLUX_SCHNELL, FLUX_SCHNELL_SCHEDULER),
}


# --- config objects -----------------------------------------------------------------------------

def encoder_config(encoder: Encoder) -> Any:
    """The transformers config object of a text encoder."""
    from transformers import CLIPTextConfig, T5Config

    if encoder.cls == "T5EncoderModel":
        return T5Config(architectures=["T5EncoderModel"], **encoder.config)
    return CLIPTextConfig(architectures=[encoder.cls], vocab_size=CLIP_VOCAB, max_position_embeddings=77,
                          layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0, initializer_factor=1.0,
                          initializer_range=0.02, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                          **encoder.config)


def _diffusers_config(cls_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The full config (defaults filled in) diffusers writes for `cls_name` built with `config`;
    the model is built on the meta device, so this takes no memory."""
    import diffusers
    import torch

    cls = getattr(diffusers, cls_name)
    with torch.device("meta"):
        model = cls(**config)
    return json.loads(model.to_json_string())


def _scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return json.loads(FlowMatchEulerDiscreteScheduler(**config).to_json_string())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _clip_tokenizer(source: Path, out: Path, pad: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(source / name, out / name)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", **special, "model_max_length": 77, "do_lower_case": True,
        "errors": "replace", "add_prefix_space": False, "clean_up_tokenization_spaces": True,
        "split_special_tokens": True})


def write_variant(key: str, out: Path, *, clip_source: Path | None = None) -> Path:
    """resources/loading/<key>/ (configs, CLIP tokenizers, model_index.json) under `out`."""
    import diffusers

    from transferstudio.backbones.sdfiles._paths import loading_root

    spec = VARIANTS[key]
    folder = Path(out) / key
    if folder.exists():
        shutil.rmtree(folder)
    source = Path(clip_source) if clip_source is not None else loading_root() / "sdxl" / "tokenizer"
    _write_json(folder / "transformer" / "config.json", _diffusers_config(spec.transformer_class, spec.transformer))
    _write_json(folder / "vae" / "config.json", _diffusers_config("AutoencoderKL", spec.vae))
    _write_json(folder / "scheduler" / "scheduler_config.json", _scheduler_config(spec.scheduler))
    for name, encoder in spec.encoders.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        encoder_config(encoder).save_pretrained(folder / name)
    for name, pad in spec.clip_pads.items():
        _clip_tokenizer(source, folder / name, pad)
    index: dict[str, Any] = {"_class_name": spec.pipeline, "_diffusers_version": diffusers.__version__,
                             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    for name, encoder in spec.encoders.items():
        index[name] = ["transformers", encoder.cls]
        tokenizer = name.replace("text_encoder", "tokenizer")
        index[tokenizer] = ["transformers", "T5TokenizerFast" if encoder.cls == "T5EncoderModel" else "CLIPTokenizer"]
    index["transformer"] = ["diffusers", spec.transformer_class]
    index["vae"] = ["diffusers", "AutoencoderKL"]
    index.update(spec.extra_index)
    ordered = sorted(index.items(), key=lambda kv: (not kv[0].startswith("_"), kv[0]))
    _write_json(folder / "model_index.json", dict(ordered))
    return folder


def write_all(out: Path | None = None) -> list[Path]:
    from transferstudio.backbones.sdfiles._paths import loading_root

    out = Path(out) if out is not None else loading_root()
    source = loading_root() / "sdxl" / "tokenizer"
    if (out / "sdxl" / "tokenizer").is_dir():
        source = out / "sdxl" / "tokenizer"
    return [write_variant(key, out, clip_source=source) for key in VARIANTS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="the loading folder (default: the bundled one)")
    args = parser.parse_args(argv)
    for folder in write_all(args.out):
        print(folder)


if __name__ == "__main__":
    main()
