"""Helpers for library tests: synthetic safetensors headers and tiny models with the real block layout.

Tiny models keep each family's real structure (block count/types, layers per block, linear vs conv
projections, text-time embedding) with tiny widths: the original-layout converters depend on it.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}


def write_fake_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]],
                           metadata: dict[str, str] | None = None, *, data_bytes: int | None = None) -> Path:
    """Write a valid safetensors header; the data area is a sparse hole (costs no disk)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * _SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + (offset if data_bytes is None else data_bytes))
    return path


U = "model.diffusion_model."


def fake_checkpoint_keys(family: str, *, in_channels: int = 4, unet_only: bool = False,
                         v_pred_key: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The handful of keys (real names, real shapes where detection looks) of each family."""
    ch = 384 if family == "sdxl-refiner" else 320
    t: dict[str, tuple[str, tuple[int, ...]]] = {
        U + "input_blocks.0.0.weight": ("F16", (ch, in_channels, 3, 3)),
        U + "out.2.weight": ("F16", (4, ch, 3, 3)),
    }
    if family in ("sd1", "sd2"):
        width = 768 if family == "sd1" else 1024
        t[U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = ("F16", (320, width))
        t[U + "output_blocks.11.0.skip_connection.weight"] = ("F16", (320, 640, 1, 1))
    else:
        t[U + "label_emb.0.0.weight"] = ("F16", (ch * 4, 2816 if family == "sdxl" else 2560))
        t[U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] = (
            "F16", (640 if family == "sdxl" else 768, 2048 if family == "sdxl" else 1280))
    if unet_only:
        return t
    t["first_stage_model.encoder.conv_in.weight"] = ("F16", (128, 3, 3, 3))
    t["first_stage_model.decoder.conv_out.weight"] = ("F16", (3, 128, 3, 3))
    if family == "sd1":
        t["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = ("F16", (8, 768))
    elif family == "sd2":
        t["cond_stage_model.model.token_embedding.weight"] = ("F16", (8, 1024))
    elif family == "sdxl":
        t["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = ("F16", (8, 768))
        t["conditioner.embedders.1.model.positional_embedding"] = ("F16", (77, 1280))
    else:
        t["conditioner.embedders.0.model.positional_embedding"] = ("F16", (77, 1280))
        t["conditioner.embedders.0.model.text_projection"] = ("F16", (1280, 1280))
    if v_pred_key:
        t["v_pred"] = ("F32", ())
    return t


# --------------------------------------------------------------------------------------------
# Tiny diffusers models with the real block structure of each family.


def tiny_configs(family: str) -> dict[str, dict]:
    """Component configs (diffusers/transformers kwargs) for a tiny model of `family`."""
    te_l = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=32)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
               block_out_channels=[8, 16, 16, 16], norm_num_groups=4,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               sample_size=64)
    if family == "sd1":
        unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=[8, 16, 16, 16], norm_num_groups=4, attention_head_dim=2,
                    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                    cross_attention_dim=32)
        return {"unet": unet, "vae": vae, "text_encoder": te_l}
    if family in ("sd2", "sd2-v"):
        te_h = dict(te_l, hidden_act="gelu", num_hidden_layers=3, projection_dim=32)
        unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=[8, 16, 16, 16], norm_num_groups=4, attention_head_dim=[1, 2, 2, 2],
                    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                    cross_attention_dim=32, use_linear_projection=True)
        return {"unet": unet, "vae": vae, "text_encoder": te_h}
    if family == "sdxl":
        te_g = dict(te_l, hidden_act="gelu", hidden_size=40, intermediate_size=44, num_hidden_layers=3,
                    num_attention_heads=5, projection_dim=40)
        unet = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=[8, 16, 32], norm_num_groups=4, attention_head_dim=[1, 2, 4],
                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    transformer_layers_per_block=[1, 2, 3], cross_attention_dim=72,
                    use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=4, projection_class_embeddings_input_dim=40 + 6 * 4)
        return {"unet": unet, "vae": dict(vae, force_upcast=True, scaling_factor=0.13025),
                "text_encoder": te_l, "text_encoder_2": te_g}
    raise ValueError(family)


def build_tiny_models(family: str, seed: int = 0) -> dict:
    """Random tiny components (diffusers/transformers modules) for `family`, deterministic by seed."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfgs = tiny_configs(family)
    torch.manual_seed(seed)
    models = {"unet": UNet2DConditionModel(**cfgs["unet"]), "vae": AutoencoderKL(**cfgs["vae"]),
              "text_encoder": CLIPTextModel(CLIPTextConfig(**cfgs["text_encoder"]))}
    if "text_encoder_2" in cfgs:
        models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["text_encoder_2"]))
    # Norm layers start at exactly 1/0; randomise every tensor so a misplaced one cannot pass unnoticed.
    with torch.no_grad():
        for m in models.values():
            for p in m.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    return {k: m.eval() for k, m in models.items()}


def write_tiny_config_root(root: Path, family: str) -> Path:
    """A bundled-style folder (`root/<key>/…`) holding the tiny configs and the real tokenizer files."""
    import shutil

    from transferstudio.backbones.sdfiles._paths import loading_root

    key = family
    src = loading_root() / key
    dst = root / key
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "model_index.json", dst / "model_index.json")
    shutil.copytree(src / "scheduler", dst / "scheduler", dirs_exist_ok=True)
    for tok in ("tokenizer", "tokenizer_2"):
        if (src / tok).is_dir():
            shutil.copytree(src / tok, dst / tok, dirs_exist_ok=True)
    cfgs = tiny_configs(family)
    classes = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for name, cfg in cfgs.items():
        (dst / name).mkdir(exist_ok=True)
        if name in classes:
            body = {"_class_name": classes[name], **cfg}
        else:
            arch = "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"
            body = {"architectures": [arch], "model_type": "clip_text_model", "bos_token_id": 49406,
                    "eos_token_id": 49407, **cfg}
        (dst / name / "config.json").write_text(json.dumps(body, indent=2))
    return root
