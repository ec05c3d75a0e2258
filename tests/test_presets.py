"""Presets by GPU size and the person's own presets (project layer: no torch), and that the
built-in presets fit their tiers by the memory plan."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from transferstudio.core.errors import ProjectError
from transferstudio.project import presets
from transferstudio.project.config import TrainConfig
from transferstudio.project.presets import (GIB, builtin_presets, choose_preset, load_user_presets, method_for_tier,
                                            model_kind, new_project_settings, save_user_preset, tier_for)

SD = SimpleNamespace(objective="diffusion", latent=True, supports_full_finetune=True, methods=("lora", "full"),
                     suggested=(), conditioning="text")
SDXL = SimpleNamespace(objective="diffusion", latent=True, supports_full_finetune=False, methods=("lora",),
                       suggested=(), conditioning="text")
STARTER = SimpleNamespace(objective="diffusion", latent=False, supports_full_finetune=True, methods=("lora", "full"),
                          suggested=(), conditioning="none")
GAN = SimpleNamespace(objective="adversarial", latent=False, supports_full_finetune=True, methods=("full",),
                      suggested=(("method", "full"), ("batch_size", 16), ("learning_rate", 2e-3), ("ema", True)))


def test_kinds_come_from_capabilities():
    assert model_kind(SD) == "latent-diffusion"
    assert model_kind(SDXL) == "large-latent-diffusion"
    assert model_kind(STARTER) == "pixel-diffusion"
    assert model_kind(GAN) == "adversarial"
    assert model_kind(SimpleNamespace(objective="reconstruction")) == "reconstruction"
    assert model_kind(SimpleNamespace(objective="something new")) == ""  # no presets, no crash
    flux = SimpleNamespace(objective="diffusion", latent=True, prediction_type="flow", supports_full_finetune=False,
                           methods=("lora",), suggested=(("learning_rate", 4e-4),))
    assert model_kind(flux) == "flow-transformer" and [p.tier for p in builtin_presets("flow-transformer")] == \
        ["12", "24"]
    started = new_project_settings(flux, "lora", "24")
    assert (started.rank, started.learning_rate) == (16, 4e-4)  # the family's own suggestion wins
    assert started.gradient_checkpointing and started.batch_size == 1 and started.fp8_base
    assert choose_preset("flow-transformer", "lora", "8").tier == "12"  # smaller cards: it says which card it is for


def test_tier_from_gpu_memory():
    assert tier_for(None) == "cpu"
    # cards report a little less than they are sold as
    assert [tier_for(int(g * GIB)) for g in (3.9, 5.8, 7.7, 11.6, 15.7, 23.6, 79.1)] == \
        ["6", "6", "8", "12", "16", "24", "24"]


def test_choosing_presets_by_tier():
    assert choose_preset("latent-diffusion", "lora", "12").name == "12 GB GPU"
    assert choose_preset("latent-diffusion", "lora", "24").name == "16 GB+ GPU"  # the top preset covers bigger cards
    assert choose_preset("latent-diffusion", "lora", "cpu").tier == "cpu"
    # full fine-tuning of SD 1.5 needs 12 GB: an 8 GB card gets the smallest (it says which card it is for)
    assert choose_preset("latent-diffusion", "full", "8").tier == "12"
    # SDXL: nothing below 16 GB; a GPU user gets the GPU preset, not the CPU one
    assert choose_preset("large-latent-diffusion", "lora", "8").tier == "16"
    assert choose_preset("pixel-diffusion", "lora", "16").name == "Any computer"
    assert choose_preset("large-latent-diffusion", "full", "24") is None  # SDXL is not fully fine-tuned here
    assert method_for_tier("latent-diffusion", "full", "8", ("lora", "full")) == "lora"
    assert method_for_tier("latent-diffusion", "full", "24", ("lora", "full")) == "full"


def test_applying_a_preset_keeps_the_project_settings():
    config = TrainConfig(trigger="mystyle", preview_prompts=["a cat"], batch_size=8, learning_rate=3e-4)
    preset = choose_preset("latent-diffusion", "lora", "6")
    applied = preset.apply(config)
    assert applied.batch_size == 1 and applied.gradient_checkpointing and applied.rank == 16
    assert applied.trigger == "mystyle" and applied.preview_prompts == ["a cat"]
    assert applied.learning_rate == 3e-4  # not named by the preset
    assert config.batch_size == 8  # the original is untouched
    assert "batch 1" in preset.describe() and "gradient checkpointing" in preset.describe()
    for kind in presets.KINDS:
        for each in builtin_presets(kind):
            assert not TrainConfig.from_dict(each.overrides).problems(), each


def test_new_project_defaults_suit_the_model_and_method():
    """Issue 17: the starter with LoRA used to start at the rate of a large model's LoRA (1e-4,
    batch 1), and after a few hundred steps nothing showed."""
    lora = new_project_settings(STARTER, "lora", "cpu")
    assert (lora.method, lora.learning_rate, lora.batch_size, lora.rank) == ("lora", 2e-3, 16, 32)
    full = new_project_settings(STARTER, "full", "12")
    assert (full.method, full.learning_rate, full.batch_size) == ("full", 5e-4, 16)
    sd = new_project_settings(SD, "lora", "8")
    assert (sd.learning_rate, sd.batch_size, sd.gradient_checkpointing) == (1e-4, 2, True)
    sd_full = new_project_settings(SD, "full", "16")
    assert (sd_full.learning_rate, sd_full.optimizer) == (1e-5, "adafactor")
    gan = new_project_settings(GAN, "lora", "8")  # a method the family does not offer: its own
    assert (gan.method, gan.batch_size, gan.learning_rate, gan.ema) == ("full", 16, 2e-3, True)
    chosen = choose_preset("latent-diffusion", "lora", "16")
    assert new_project_settings(SD, "lora", "6", preset=chosen).batch_size == 4


def test_user_presets_save_and_load(tmp_path):
    folder = tmp_path / "presets"
    saved = save_user_preset("  My fast  LoRA ", TrainConfig(rank=8, batch_size=3, trigger="mine"), kind="latent-diffusion",
                             folder=folder)
    assert saved.name == "My fast LoRA" and saved.path.is_file()
    assert "trigger" not in json.loads(saved.path.read_text())["settings"]  # a project's own setting
    loaded, problems = load_user_presets(folder)
    assert problems == [] and [p.name for p in loaded] == ["My fast LoRA"]
    assert loaded[0].apply(TrainConfig(trigger="other")).rank == 8
    assert loaded[0].apply(TrainConfig(trigger="other")).trigger == "other"
    save_user_preset("my fast lora", TrainConfig(rank=4), folder=folder)  # the same name replaces it
    loaded, _ = load_user_presets(folder)
    assert len(loaded) == 1 and loaded[0].overrides["rank"] == 4
    with pytest.raises(ProjectError):
        save_user_preset("   ", TrainConfig(), folder=folder)


@pytest.mark.parametrize("content, says", [
    ("{ not json", "not valid JSON"),
    (json.dumps([1, 2]), "not a TransferStudio preset"),
    (json.dumps({"format": "transferstudio-preset", "version": 1, "name": "x", "settings": {"rank": "big"}}),
     "bad setting: rank"),
    (json.dumps({"format": "transferstudio-preset", "version": 1, "name": "x", "settings": {"wings": 2}}),
     "does not know: wings"),
    (json.dumps({"format": "transferstudio-preset", "version": 99, "name": "x", "settings": {}}), "newer"),
])
def test_a_damaged_preset_file_is_reported_and_kept(tmp_path, content, says):
    folder = tmp_path / "presets"
    folder.mkdir()
    bad = folder / "broken.json"
    bad.write_text(content, encoding="utf-8")
    save_user_preset("good", TrainConfig(), folder=folder)
    loaded, problems = load_user_presets(folder)
    assert [p.name for p in loaded] == ["good"]  # the others still load
    assert len(problems) == 1 and says in problems[0] and str(bad) in problems[0]
    assert bad.read_text(encoding="utf-8") == content  # left as it was
    # saving over it keeps the damaged file beside the new one: nothing is lost
    save_user_preset("broken", TrainConfig(rank=2), folder=folder)
    assert (folder / "broken.json.damaged").read_text(encoding="utf-8") == content
    assert load_user_presets(folder)[0][0].name == "broken"


def test_user_presets_live_in_the_app_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(tmp_path / "home"))
    save_user_preset("Mine", TrainConfig())
    assert (tmp_path / "home" / "presets" / "mine.json").is_file()
    assert [p.name for p in load_user_presets()[0]] == ["Mine"]


def test_presets_need_no_torch():
    import subprocess
    import sys

    code = ("import sys, transferstudio.project.presets\n"
            "print(','.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'PySide6')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr


def test_small_model_presets_fit_every_tier():
    """The starters at their preset settings: well inside the smallest GPU tier."""
    from transferstudio.core.paths import resource
    from transferstudio.training.memory_plan import MemoryPlanner

    for folder, kind, method in (("starter", "pixel-diffusion", "lora"), ("starter", "pixel-diffusion", "full"),
                                 ("starter_vae", "reconstruction", "decoder"), ("starter_gan", "adversarial", "full")):
        planner = MemoryPlanner(resource(folder), device="cuda")
        caps = SimpleNamespace(objective={"reconstruction": "reconstruction", "adversarial": "adversarial"}.get(
            kind, "diffusion"), latent=False, supports_full_finetune=True, methods=(method,), suggested=())
        config = new_project_settings(caps, method, "6")
        plan = planner.plan(config, advise=False)
        assert plan.total < 6 * GIB * 0.9, (folder, method, plan.describe())


@pytest.mark.slow
@pytest.mark.parametrize("family, folder, kind", [("sd", "sd1", "latent-diffusion"),
                                                  ("sdxl", "sdxl", "large-latent-diffusion")])
def test_builtin_presets_fit_their_tier(family, folder, kind):
    """SD 1.5 (512 px) and SDXL (1024 px) from their real configs: each GPU preset's memory plan
    fits the smallest card of its tier with 10% to spare (the desktop's share, the estimate's error)."""
    from transferstudio.backbones.sdfiles._paths import loading_root
    from transferstudio.training.memory_plan import MemoryPlanner

    planner = MemoryPlanner(loading_root() / folder, family=family, device="cuda")
    for preset in builtin_presets(kind):
        if preset.tier == "cpu":
            continue
        plan = planner.plan(preset.apply(TrainConfig(precision="bf16")), advise=False)
        assert plan.total <= 0.9 * int(preset.tier) * GIB, (preset.name, preset.method, plan.describe())


@pytest.mark.slow
def test_flow_transformer_presets_fit_their_tier(tmp_path):
    """SD3.5 medium (1024 px) from its bundled configs (a stand-in T5 tokenizer: only its length
    shapes memory): each GPU preset fits the smallest card of its tier with 10% to spare."""
    from transferstudio.devtools.plan_table import flow_planning_folder
    from transferstudio.training.memory_plan import MemoryPlanner

    # each tier's largest model: SD3.5 medium for 12 GB, FLUX.1 dev for 24 GB
    for variant, family, tier in (("sd3.5-medium", "sd3", "12"), ("flux-dev", "flux", "24")):
        planner = MemoryPlanner(flow_planning_folder(variant, tmp_path / variant), family=family, device="cuda")
        preset = next(p for p in builtin_presets("flow-transformer") if p.tier == tier)
        plan = planner.plan(preset.apply(TrainConfig(precision="bf16", resolution=1024)), advise=False)
        assert plan.total <= 0.95 * int(preset.tier) * GIB, (variant, preset.name, plan.describe())


def test_purpose_presets_set_how_a_lora_learns_and_combine_with_the_gpu_size():
    from transferstudio.project.presets import matching_purpose, purpose_presets

    sd = SimpleNamespace(objective="diffusion", latent=True, prediction_type="epsilon", supports_full_finetune=True,
                         methods=("lora", "full"), suggested=())
    assert [p.purpose for p in purpose_presets("latent-diffusion")] == ["style", "character", "object"]
    assert purpose_presets("pixel-diffusion") == [] and purpose_presets("latent-diffusion", "full") == []
    gpu_names = set().union(*(dict(p.settings) for p in builtin_presets("latent-diffusion", "lora")))
    for preset in purpose_presets("latent-diffusion"):
        assert not set(preset.overrides) & gpu_names  # nothing a GPU preset sets: they combine
        assert preset.describe()
    character = new_project_settings(sd, "lora", "8", purpose="character")
    assert character.flip is False and character.keep_tags == 1 and character.batch_size == 2
    assert matching_purpose("latent-diffusion", character).purpose == "character"
    assert matching_purpose("latent-diffusion", new_project_settings(sd, "lora", "8")) is None
    flow_object = next(p for p in purpose_presets("flow-transformer") if p.purpose == "object")
    assert "min_snr_gamma" not in flow_object.overrides  # flow matching refuses Min-SNR
