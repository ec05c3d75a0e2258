"""The bundled loading files of SD3 / SD3.5 / FLUX.1 single files (resources/loading/<variant>/,
written by transferstudio.devtools.write_flow_loading) and the search for a T5 tokenizer on the
user's disk. Nothing is downloaded and no weight is made: models are built on the meta device, and
"real" files are sparse files holding a real-size header (read_safetensors_header reads only that)."""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from transferstudio.backbones.sdfiles.detect import FLOW_VARIANTS  # noqa: E402

VARIANTS = tuple(FLOW_VARIANTS)
B = 1e9
# Published sizes (parameters, in billions, with the buffers saved in the files: SD3's position
# embeddings): Stability's "2B" SD3 medium, "2.5B" SD3.5 medium, "8.1B" SD3.5 large; Black Forest
# Labs' "12B" FLUX.1 (11.9B: flux1-dev.safetensors is 23.8 GB in bf16); T5 v1.1 XXL's encoder
# 4.76B (t5xxl_fp16.safetensors, 9.5 GB); OpenCLIP bigG's text tower with projection 0.69B,
# OpenAI CLIP-L's 0.12B; the SD3/FLUX VAE 84M.
PUBLISHED = {"sd3-medium": 2.0, "sd3.5-medium": 2.5, "sd3.5-large": 8.1, "flux-dev": 11.9, "flux-schnell": 11.9}
ENCODERS = {"CLIPTextModel": 0.123, "CLIPTextModelWithProjection:768": 0.124, "CLIPTextModelWithProjection:1280": 0.69,
            "T5EncoderModel": 4.76}
# Shapes of real files' weights (original layout), as ComfyUI and the reference code read them.
REAL_SHAPES = {
    "sd3-medium": {"pos_embed": (1, 192 * 192, 1536), "x_embedder.proj.weight": (1536, 16, 2, 2),
                   "context_embedder.weight": (1536, 4096), "y_embedder.mlp.0.weight": (1536, 2048),
                   "joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536),
                   "joint_blocks.23.context_block.adaLN_modulation.1.weight": (3072, 1536),
                   "final_layer.linear.weight": (64, 1536)},
    "sd3.5-medium": {"pos_embed": (1, 384 * 384, 1536), "joint_blocks.12.x_block.attn2.qkv.weight": (4608, 1536),
                     "joint_blocks.0.x_block.adaLN_modulation.1.weight": (9 * 1536, 1536),
                     "joint_blocks.0.x_block.attn.ln_q.weight": (64,)},
    "sd3.5-large": {"pos_embed": (1, 192 * 192, 2432), "context_embedder.weight": (2432, 4096),
                    "joint_blocks.37.x_block.attn.qkv.weight": (7296, 2432),
                    "joint_blocks.0.context_block.attn.ln_k.weight": (64,)},
    "flux-dev": {"img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096), "vector_in.in_layer.weight": (3072, 768),
                 "guidance_in.in_layer.weight": (3072, 256), "double_blocks.18.img_attn.qkv.weight": (9216, 3072),
                 "double_blocks.0.img_mod.lin.weight": (18432, 3072),
                 "double_blocks.0.txt_attn.norm.key_norm.scale": (128,),
                 "single_blocks.37.linear1.weight": (21504, 3072), "single_blocks.0.linear2.weight": (3072, 15360),
                 "final_layer.adaLN_modulation.1.weight": (6144, 3072), "final_layer.linear.weight": (64, 3072)},
    "flux-schnell": {"img_in.weight": (3072, 64), "single_blocks.37.modulation.lin.weight": (9216, 3072)},
}


def _folder(variant: str) -> Path:
    from transferstudio.backbones.sdfiles._paths import loading_root

    return loading_root() / variant


def _count(module: torch.nn.Module) -> int:
    """Weights and saved buffers, tied weights once (what a file of the model holds)."""
    seen = {id(t): t.numel() for t in module.state_dict(keep_vars=True).values()}
    return sum(seen.values())


def _meta(variant: str, name: str):
    import diffusers
    import transformers

    index = json.loads((_folder(variant) / "model_index.json").read_text())
    library, cls_name = index[name]
    with torch.device("meta"):
        if library == "diffusers":
            cls = getattr(diffusers, cls_name)
            return cls.from_config(cls.load_config(_folder(variant) / name))
        config = transformers.AutoConfig.from_pretrained(_folder(variant) / name, local_files_only=True)
        return getattr(transformers, cls_name)(config)


_TRANSFORMERS: dict[str, torch.nn.Module] = {}


def _transformer(variant: str):
    if variant not in _TRANSFORMERS:
        _TRANSFORMERS[variant] = _meta(variant, "transformer")
    return _TRANSFORMERS[variant]


def _original(variant: str) -> dict[str, tuple[int, ...]]:
    """The meta transformer's weights under their original (single-file) names."""
    from transferstudio.backbones import mmdit_layout as layout

    state = _transformer(variant).state_dict()
    kind = "flux" if variant.startswith("flux") else "sd3"
    original = layout.to_original(state, layout.layers_of(kind, layout.shapes_of(state)))
    return {k: tuple(v.shape) for k, v in original.items()}


# --- the configs --------------------------------------------------------------------------------

def test_the_generator_writes_what_is_bundled(tmp_path):
    """The bundled folders are exactly what write_flow_loading writes (nobody edited them by hand)."""
    from transferstudio.devtools.write_flow_loading import VARIANTS as SPECS, write_variant

    assert set(SPECS) == set(VARIANTS)
    for variant in ("sd3.5-medium", "flux-dev"):
        written = write_variant(variant, tmp_path)
        for file in sorted(p for p in written.rglob("*") if p.is_file()):
            rel = file.relative_to(written)
            bundled = _folder(variant) / rel
            assert bundled.is_file(), rel
            if file.suffix == ".json":
                ours, theirs = json.loads(file.read_text()), json.loads(bundled.read_text())
                for drop in ("transformers_version", "_diffusers_version"):
                    ours.pop(drop, None), theirs.pop(drop, None)
                assert ours == theirs, rel
        assert {p.relative_to(_folder(variant)) for p in _folder(variant).rglob("*") if p.is_file()} == \
            {p.relative_to(written) for p in written.rglob("*") if p.is_file()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_configs_build_with_the_published_sizes(variant):
    index = json.loads((_folder(variant) / "model_index.json").read_text())
    flux = variant.startswith("flux")
    assert index["_class_name"] == ("FluxPipeline" if flux else "StableDiffusion3Pipeline")
    assert _count(_transformer(variant)) / B == pytest.approx(PUBLISHED[variant], rel=0.05)
    vae = _meta(variant, "vae")
    assert _count(vae) / B == pytest.approx(0.084, rel=0.02)
    assert (vae.config.latent_channels, vae.config.scaling_factor, vae.config.shift_factor) == \
        ((16, 0.3611, 0.1159) if flux else (16, 1.5305, 0.0609))
    for name in [n for n in index if n.startswith("text_encoder")]:
        model = _meta(variant, name)
        key = type(model).__name__
        if key == "CLIPTextModelWithProjection":
            key += f":{model.config.hidden_size}"
        assert _count(model) / B == pytest.approx(ENCODERS[key], rel=0.03), (variant, name)
    scheduler = json.loads((_folder(variant) / "scheduler" / "scheduler_config.json").read_text())
    if variant == "flux-dev":
        assert scheduler["use_dynamic_shifting"] and (scheduler["base_shift"], scheduler["max_shift"],
                                                      scheduler["base_image_seq_len"],
                                                      scheduler["max_image_seq_len"]) == (0.5, 1.15, 256, 4096)
    else:
        assert not scheduler["use_dynamic_shifting"] and scheduler["shift"] == (1.0 if flux else 3.0)
    assert _transformer(variant).config.get("guidance_embeds", False) == (variant == "flux-dev")


def test_clip_tokenizers_pad_as_the_releases_do():
    """CLIP-L pads with <|endoftext|>; SD3's second (OpenCLIP bigG) with "!" (id 0), as ComfyUI's clip_g."""
    from transformers import CLIPTokenizer

    for variant, name, pad in (("sd3-medium", "tokenizer", 49407), ("sd3.5-large", "tokenizer_2", 0),
                               ("flux-dev", "tokenizer", 49407)):
        tok = CLIPTokenizer.from_pretrained(_folder(variant) / name, local_files_only=True)
        ids = tok("a cat", padding="max_length", max_length=77).input_ids
        assert (ids[:2], ids[-1], tok.pad_token_id) == ([49406, 320], pad, pad)
    for variant in VARIANTS:  # T5's is never shipped
        index = json.loads((_folder(variant) / "model_index.json").read_text())
        t5 = [k for k, v in index.items() if v == ["transformers", "T5TokenizerFast"]]
        assert len(t5) == 1 and not (_folder(variant) / t5[0]).exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_detector_reads_each_variant_from_a_real_size_header(variant):
    """The meta transformer in the original layout: its names and shapes are a real file's, and
    the detector (which reads the header alone) names the right variant."""
    from transferstudio.backbones.sdfiles.detect import SafetensorsHeader, TensorInfo, classify

    original = _original(variant)
    for key, shape in REAL_SHAPES[variant].items():
        assert original.get(key) == shape, (key, original.get(key))
    prefix = "" if variant.startswith("flux") else "model.diffusion_model."
    header = SafetensorsHeader({prefix + k: TensorInfo("BF16", s) for k, s in original.items()}, {}, 0, 0)
    found = classify(header)
    assert found.usable and found.config_key == variant and found.label == FLOW_VARIANTS[variant]


# --- real-size single files (sparse: a header and a hole) --------------------------------------

def _sparse(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "BF16") -> Path:
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def _encoder_shapes(variant: str, name: str) -> dict[str, tuple[int, ...]]:
    state = _meta(variant, name).state_dict()
    state.pop("encoder.embed_tokens.weight", None)  # T5 files keep the tied embedding once
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}


def _vae_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    from transferstudio.backbones.sdfiles.original_layout import vae_to_original

    return {k: tuple(v.shape) for k, v in vae_to_original(_meta(variant, "vae")).items()}


def _comfyui(root: Path, variant: str) -> Path:
    """A ComfyUI install with a full-size model of `variant` laid out as its users keep it."""
    (root / "comfy" / "text_encoders").mkdir(parents=True)
    models = root / "models"
    t5 = "text_encoder_3" if variant.startswith("sd3") else "text_encoder_2"
    _sparse(models / "text_encoders" / "t5xxl_fp16.safetensors", _encoder_shapes(variant, t5), "F16")
    _sparse(models / "text_encoders" / "clip_l.safetensors", _encoder_shapes("sd3-medium", "text_encoder"), "F16")
    if variant.startswith("flux"):
        _sparse(models / "vae" / "ae.safetensors", {k.removeprefix("first_stage_model."): s
                                                    for k, s in _vae_shapes(variant).items()})
        return _sparse(models / "diffusion_models" / "flux1-dev.safetensors", _original(variant))
    _sparse(models / "text_encoders" / "clip_g.safetensors", _encoder_shapes(variant, "text_encoder_2"), "F16")
    shapes = {"model.diffusion_model." + k: s for k, s in _original(variant).items()}
    return _sparse(models / "checkpoints" / f"{variant}.safetensors", {**shapes, **_vae_shapes(variant)})


def _t5_vocab(size: int) -> list[tuple[str, float]]:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"
    pieces += [(c, -8.0) for c in chars] + [("▁" + c, -7.0) for c in chars]
    pieces += [(f"▁w{i}", -10.0) for i in range(size - len(pieces))]
    return pieces


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory) -> Path:
    """A stand-in for T5's tokenizer of T5's size (32,000 pieces and 100 extra ids; made-up
    pieces: T5's own cannot be made offline), saved as diffusers downloads keep it."""
    from transformers import T5TokenizerFast

    folder = tmp_path_factory.mktemp("t5") / "tokenizer_2"
    T5TokenizerFast(vocab=_t5_vocab(32000), extra_ids=100, model_max_length=512).save_pretrained(folder)
    return folder


@pytest.fixture()
def clean(tmp_path, monkeypatch) -> Path:
    """No T5 tokenizer anywhere: no choice in the environment, an empty Hugging Face cache."""
    monkeypatch.delenv("TRANSFERSTUDIO_T5_TOKENIZER", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def _put(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


def test_the_t5_tokenizer_is_looked_for_in_order(clean, t5_tokenizer, monkeypatch):
    from transferstudio.backbones.sdfiles.flow_file import find_t5_tokenizer

    root = clean / "ComfyUI"
    file = root / "models" / "diffusion_models" / "flux1-dev.safetensors"
    file.parent.mkdir(parents=True)
    (root / "comfy").mkdir()
    t5_file = root / "models" / "text_encoders" / "t5xxl_fp16.safetensors"
    t5_file.parent.mkdir(parents=True)

    snapshot = clean / "hub" / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / "0123abc"
    cached = _put(t5_tokenizer, snapshot / "tokenizer_2")
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    old_comfy = _put(t5_tokenizer, root / "comfy" / "t5_tokenizer")
    comfy = _put(t5_tokenizer, root / "comfy" / "text_encoders" / "t5_tokenizer")
    near_encoder = _put(t5_tokenizer, t5_file.parent / "tokenizer_2")
    beside = _put(t5_tokenizer, file.parent / "t5_tokenizer")
    resources = clean / "resources"
    shutil.copytree(_folder("flux-dev"), resources / "loading" / "flux-dev")
    loading = _put(t5_tokenizer, resources / "loading" / "flux-dev" / "tokenizer_2")
    chosen = _put(t5_tokenizer, clean / "mine")
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(resources))
    monkeypatch.setenv("TRANSFERSTUDIO_T5_TOKENIZER", str(chosen))

    assert find_t5_tokenizer(file, "flux-dev", chosen=near_encoder) == near_encoder  # the caller's choice first
    order = [chosen, loading, beside, near_encoder, comfy, old_comfy, cached]
    for expected in order:
        assert find_t5_tokenizer(file, "flux-dev", near=[t5_file]) == expected
        if expected == chosen:
            monkeypatch.delenv("TRANSFERSTUDIO_T5_TOKENIZER")
        else:
            shutil.rmtree(expected)

    # the cache as HF_HOME points to it; an SD3 download's tokenizer_3, found by its repository's name
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(clean / "hf"))
    sd3 = _put(t5_tokenizer, clean / "hf" / "hub" / "models--stabilityai--stable-diffusion-3.5-large" / "snapshots"
               / "abc" / "tokenizer_3")
    assert find_t5_tokenizer(file, "flux-dev") == sd3


def test_sd3_skips_its_clip_tokenizer_2_and_finds_tokenizer_3(clean, t5_tokenizer):
    from transferstudio.backbones.sdfiles.flow_file import find_t5_tokenizer

    file = clean / "sd3" / "sd3.5_large.safetensors"
    shutil.copytree(_folder("sd3.5-large") / "tokenizer_2", file.parent / "tokenizer_2")  # CLIP-G's: not T5's
    t5 = _put(t5_tokenizer, file.parent / "tokenizer_3")
    assert find_t5_tokenizer(file, "sd3.5-large") == t5


def test_no_t5_tokenizer_refuses_the_file_saying_what_to_put_where(clean, t5_tokenizer):
    from transferstudio.backbones.registry import family, inspect_backbone, load_backbone
    from transferstudio.backbones.sdfiles.flow_file import find_t5_tokenizer
    from transferstudio.core.errors import BackboneError

    file = _comfyui(clean / "ComfyUI", "flux-dev")
    found = inspect_backbone(file)
    assert not found.usable and found.problems == ("no T5 tokenizer was found for FLUX.1 dev (TransferStudio does "
                                                   "not ship one and never downloads it)",)
    assert f"ComfyUI users: this ComfyUI install ({clean / 'ComfyUI'}) has no comfy/text_encoders/t5_tokenizer" \
        in found.advice
    assert f"copy the tokenizer_2 folder of the FLUX.1 diffusers download (or the tokenizer_3 folder of an SD3 " \
           f"one) to {file.parent / 't5_tokenizer'}" in found.advice
    assert "TRANSFERSTUDIO_T5_TOKENIZER" in found.advice and str(clean / "hub") in found.advice
    elsewhere = _sparse(clean / "downloads" / "flux1-dev.safetensors", {})
    with pytest.raises(BackboneError, match="No T5 tokenizer was found for FLUX.1 dev") as caught:
        find_t5_tokenizer(elsewhere, "flux-dev")
    assert "ComfyUI users: keep the model in ComfyUI's models folder" in caught.value.advice
    with pytest.raises(BackboneError, match="no T5 tokenizer was found") as caught:
        load_backbone(file)
    assert "ComfyUI users" in caught.value.advice

    # ComfyUI's own copy: the full-size file is recognised, each part from its file
    comfy = _put(t5_tokenizer, clean / "ComfyUI" / "comfy" / "text_encoders" / "t5_tokenizer")
    found = inspect_backbone(file)
    assert found.usable and found.variant == "flux-dev" and found.native_resolution == 1024, found.describe()
    details = dict(found.details)
    assert (details["vae"], details["text encoder"], details["text encoder 2"], details["T5 tokenizer"]) == \
        ("ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", str(comfy))
    with torch.device("meta"):  # what the memory plan builds: every weight on the meta device
        skeleton = family("flux").skeleton(file)
    assert skeleton.variant == "flux-dev" and skeleton.max_sequence_length == 512
    assert len(skeleton.tokenizers["tokenizer_2"]) == 32100


def test_a_real_size_sd3_file_with_its_text_encoders_beside_it_is_recognised(clean, t5_tokenizer):
    from transferstudio.backbones.registry import inspect_backbone

    file = _comfyui(clean / "ComfyUI", "sd3.5-medium")
    _put(t5_tokenizer, file.parent / "tokenizer_3")
    found = inspect_backbone(file)
    assert found.usable and found.variant == "sd3.5-medium" and found.native_resolution == 1024, found.describe()
    assert dict(found.details)["T5 tokenizer"] == str(file.parent / "tokenizer_3")


def test_a_wrong_tokenizer_is_refused_with_its_path(clean, t5_tokenizer, monkeypatch):
    from tiny_mmdit import write_t5_tokenizer
    from transferstudio.backbones.sdfiles.flow_file import find_t5_tokenizer
    from transferstudio.core.errors import BackboneError

    file = clean / "models" / "flux1-dev.safetensors"
    file.parent.mkdir()
    small = write_t5_tokenizer(file.parent / "t5_tokenizer")  # a T5 tokenizer, but not T5-XXL's vocabulary
    _put(t5_tokenizer, clean / "hub" / "models--black-forest-labs--FLUX.1-schnell" / "snapshots" / "x" / "tokenizer_2")
    with pytest.raises(BackboneError, match="is not T5's: it has .* tokens where T5-XXL's has 32,100") as caught:
        find_t5_tokenizer(file, "flux-dev")
    assert str(small) in caught.value.message and "found beside the model" in caught.value.message

    clip = _folder("flux-dev") / "tokenizer"
    monkeypatch.setenv("TRANSFERSTUDIO_T5_TOKENIZER", str(clip))
    with pytest.raises(BackboneError, match=f"The folder {clip} is not a T5 tokenizer"):
        find_t5_tokenizer(file, "flux-dev")
    with pytest.raises(BackboneError, match="does not exist"):
        find_t5_tokenizer(file, "flux-dev", chosen=clean / "nowhere")
