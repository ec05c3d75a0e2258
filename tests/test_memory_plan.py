"""The memory plan against real runs.

Tiny SD 1.x and DDPM models train one real step on the CPU; the bytes of their weights, gradients,
optimizer state (after a real optimizer step) and activations (what the forward pass keeps for
backward) are measured and compared with the plan, which never runs the model (meta and fake
tensors). What a person acts on is how a setting changes the figure, so the per-setting
differences must match the measured ones within DIFFERENCE_TOLERANCE; the measured errors are
in the README ("Memory plan"). `pytest -s` prints the table.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transferstudio.adapt.trainee import Trainee
from transferstudio.backbones.objective import StepContext
from transferstudio.backbones.registry import load_backbone
from transferstudio.project.config import TrainConfig
from transferstudio.training.memory_plan import GIB, MemoryPlanner, detect_gpu, optimizer_state_bytes
from transferstudio.training.trainer import _optimizer

DIFFERENCE_TOLERANCE = 0.25
ACTIVATION_TOLERANCE = 0.15  # the plan's activations against the measured ones, each setting

CASES = {
    "LoRA, batch 1": {},
    "LoRA, batch 4": {"batch_size": 4},
    "full": {"method": "full"},
    "LoRA, checkpointing": {"gradient_checkpointing": True},
    "LoRA, batch 4, checkpointing": {"batch_size": 4, "gradient_checkpointing": True},
    "full, Adafactor": {"method": "full", "optimizer": "adafactor"},
}
DIFFERENCES = (
    ("batch 1 → 4", "LoRA, batch 1", "LoRA, batch 4"),
    ("LoRA → full fine-tuning", "LoRA, batch 1", "full"),
    ("gradient checkpointing on (batch 1)", "LoRA, batch 1", "LoRA, checkpointing"),
    ("gradient checkpointing on (batch 4)", "LoRA, batch 4", "LoRA, batch 4, checkpointing"),
    ("AdamW → Adafactor", "full", "full, Adafactor"),
)
PARTS = ("weights", "gradients", "optimizer", "activations")


class _AliveAfterForward(torch.utils._python_dispatch.TorchDispatchMode):
    """Real tensors made during the forward pass, by storage; those still alive at its end are
    what the graph keeps for backward (gradient checkpointing keeps them outside saved-tensor
    hooks, so the hooks alone cannot see them)."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[object, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.made.append((StorageWeakRef(storage), storage.data_ptr(), storage.nbytes()))
        return out

    def alive(self, excluded: set[int]) -> int:
        # by address among the living: a freed tensor's memory is soon another's
        living = {ptr: n for ref, ptr, n in self.made if not ref.expired() and ptr not in excluded}
        return sum(living.values())


def measure_step(model: Path, config: TrainConfig, resolution: int) -> dict[str, int]:
    """One real training step on the CPU, measured: the bytes of every weight, of the gradients,
    of the optimizer's state after its step, of the tensors the forward pass keeps (alive at its
    end) and of those saved for backward as saved-tensor hooks see them."""
    torch.manual_seed(0)
    backbone = load_backbone(model)
    trainee = Trainee(backbone, config)
    backbone.to(torch.device("cpu"), torch.float32)
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    trainee.train_mode(True)
    objective = backbone.objective(config)
    modules = [m for m in vars(backbone).values() if isinstance(m, torch.nn.Module)]
    modules += [m for v in vars(backbone).values() if isinstance(v, list) for m in v if isinstance(m, torch.nn.Module)]
    resident = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for m in modules for t in [*m.parameters(), *m.buffers()]}
    size = config.batch_size
    batch = SimpleNamespace(pixels=torch.rand(size, 3, resolution, resolution) * 2 - 1, captions=["a red cat"] * size,
                            original_sizes=[(resolution, resolution)] * size, crop_top_left=[(0, 0)] * size,
                            target_size=(resolution, resolution), masks=None, prior=None, keys=None)
    ctx = StepContext(step=1, device=torch.device("cpu"), amp=None, generator=torch.Generator().manual_seed(0),
                      config=config)
    phase = objective.phases[0]
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    made = _AliveAfterForward()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), made:
        loss = objective.loss(phase, batch, ctx)
    del batch
    gc.collect()
    alive = made.alive(set(resident))
    loss.backward()
    params = trainee.role_parameters(phase.roles)
    gradients = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    optimizer = _optimizer(params, config, torch.device("cpu"), phase)
    optimizer.step()
    state = sum(v.untyped_storage().nbytes() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"weights": sum(resident.values()), "gradients": gradients, "optimizer": state, "activations": alive,
            "saved": sum(saved.values())}


def _total(parts: dict[str, int]) -> int:
    return sum(parts[p] for p in PARTS)


@pytest.fixture(scope="module")
def measured(tiny_sd1_dir: Path, tiny_ddpm: Path) -> dict[str, dict[str, tuple[dict[str, int], dict[str, int]]]]:
    """family -> case -> (measured, planned) bytes by part."""
    out: dict[str, dict[str, tuple[dict[str, int], dict[str, int]]]] = {}
    for name, model, resolution in (("tiny SD 1.x", tiny_sd1_dir, 32), ("tiny DDPM", tiny_ddpm, 16)):
        planner = MemoryPlanner(model, device="cpu")
        out[name] = {}
        for case, changes in CASES.items():
            config = TrainConfig(**changes)
            plan = planner.plan(config, advise=False)
            assert plan.resolution == resolution
            out[name][case] = (measure_step(model, config, resolution),
                               {p: getattr(plan, p) for p in PARTS})
    return out


def test_parts_match_a_real_step(measured):
    """Weights and gradients exactly; the optimizer's state to 1% (its step counters); the
    activations each within ACTIVATION_TOLERANCE."""
    for family, cases in measured.items():
        for case, (real, plan) in cases.items():
            assert plan["weights"] == real["weights"], (family, case)
            assert plan["gradients"] == real["gradients"], (family, case)
            assert plan["optimizer"] == pytest.approx(real["optimizer"], rel=0.01), (family, case)
            assert plan["activations"] == pytest.approx(real["activations"], rel=ACTIVATION_TOLERANCE), (family, case)


def test_setting_differences_match_the_measured_ones(measured):
    rows = ["| model | change | measured | estimated | error |", "|---|---|---|---|---|"]
    worst = 0.0
    for family, cases in measured.items():
        for label, before, after in DIFFERENCES:
            real = _total(cases[after][0]) - _total(cases[before][0])
            plan = _total(cases[after][1]) - _total(cases[before][1])
            error = (plan - real) / abs(real)
            worst = max(worst, abs(error))
            rows.append(f"| {family} | {label} | {real / 1e6:+.2f} MB | {plan / 1e6:+.2f} MB | {error:+.1%} |")
            assert abs(error) <= DIFFERENCE_TOLERANCE, (family, label, real, plan)
    print("\n" + "\n".join(rows) + f"\nworst: {worst:.1%}")
    print("\n| model | setting | part | measured | estimated | error |\n|---|---|---|---|---|---|")
    for family, cases in measured.items():
        for case, (real, plan) in cases.items():
            for part in PARTS:
                if real[part]:
                    print(f"| {family} | {case} | {part} | {real[part] / 1e6:.3f} MB | {plan[part] / 1e6:.3f} MB | "
                          f"{(plan[part] - real[part]) / real[part]:+.1%} |")


def test_saved_tensor_hooks_agree_without_checkpointing(measured):
    """An independent look at the activations: what saved-tensor hooks see. Without checkpointing
    they see most of what stays alive (not the loss's inputs the graph keeps by reference)."""
    for family, cases in measured.items():
        real = cases["LoRA, batch 4"][0]
        assert real["saved"] <= real["activations"]
        assert real["saved"] >= 0.7 * real["activations"], family


def test_optimizer_rules_by_shape():
    weight = torch.empty(64, 32)  # a matrix: Adafactor keeps a row and a column
    conv = torch.empty(16, 8, 3, 3)  # a 3×3 convolution: rows over its first three dimensions
    bias = torch.empty(64)
    assert optimizer_state_bytes("adamw", [weight, bias]) == 2 * 4 * (64 * 32 + 64)
    assert optimizer_state_bytes("adafactor", [weight], betas=(0.0, 0.99)) == 4 * (64 + 32)
    assert optimizer_state_bytes("adafactor", [conv], betas=(0.0, 0.99)) == 4 * (16 * 8 * 3 + 16 * 8 * 3)
    assert optimizer_state_bytes("adafactor", [bias], betas=(0.9, 0.99)) == 4 * 64 * 2
    big = torch.empty(256, 256)  # 8-bit AdamW: a byte per moment and a scale per 256 weights
    assert optimizer_state_bytes("adamw8bit", [big]) == 2 * (256 * 256 + 4 * 256)
    assert optimizer_state_bytes("adamw8bit", [bias]) == 2 * 4 * 64  # small tensors stay fp32
    assert optimizer_state_bytes("prodigy", [bias], betas=(0.9, 0.999)) == 4 * 4 * 64


def test_advice_when_it_does_not_fit(tiny_ddpm):
    planner = MemoryPlanner(tiny_ddpm, device="cuda")
    config = TrainConfig(method="full", batch_size=16, ema=True)
    roomy = planner.plan(config, free=64 * GIB)
    assert roomy.fits() and roomy.advice == ()
    tight = planner.plan(config, free=roomy.total - 1)
    assert tight.fits() is False
    text = "\n".join(tight.advice)
    # (a LoRA of rank 16 on this 8-channel model would train more weights than it has: not offered)
    assert "batch 16 → 1" in text and "gradient checkpointing" in text and "weight average (EMA)" in text
    assert "batch 16 → 1" in tight.advice[0] and tight.advice[0].startswith("−")  # the biggest saving first
    assert all(line.startswith("−") and "B: " in line for line in tight.advice)  # "−12 MB: …", "−3.1 GB: …"
    assert "does not fit" in tight.summary() and "To fit:" in tight.describe()
    assert roomy.total == sum(size for _, size in roomy.parts())


def test_every_family_plans(tiny_sdxl_dir):
    """Each family builds its model without weights and plans with its own objective: SDXL with its
    two text encoders, the VAE's decoder (and a discriminator from a step), the GAN's two phases."""
    from transferstudio.core.paths import resource

    sdxl = MemoryPlanner(tiny_sdxl_dir, device="cuda").plan(TrainConfig(train_text_encoder=True), advise=False)
    assert sdxl.trainable_parameters > 0 and sdxl.activations > 0 and sdxl.precision == "bf16"
    vae = MemoryPlanner(resource("starter_vae"), device="cuda")
    decoder = vae.plan(TrainConfig(method="decoder", batch_size=16), advise=False)
    with_discriminator = vae.plan(TrainConfig(method="decoder", batch_size=16, discriminator_start=10, steps=20),
                                  advise=False)
    assert with_discriminator.trainable_parameters > decoder.trainable_parameters
    assert with_discriminator.activations >= decoder.activations
    gan = MemoryPlanner(resource("starter_gan"), device="cuda")
    plain = gan.plan(TrainConfig(method="full", batch_size=16), advise=False)
    averaged = gan.plan(TrainConfig(method="full", batch_size=16, ema=True), advise=False)
    assert plain.activations > 0 and plain.optimizer > 0
    assert averaged.ema > 0 and averaged.total > plain.total


def test_gpu_detection_without_cuda():
    if torch.cuda.is_available():
        found = detect_gpu()
        assert found is not None and 0 < found.free <= found.total
    else:
        assert detect_gpu() is None


def test_cli_plan_prints_and_trains_nothing(tmp_path, tiny_ddpm, capsys):
    from tiny_ddpm import make_images

    from transferstudio.cli import main

    images = make_images(tmp_path / "pictures", n=3, size=16)
    project = tmp_path / "project"
    assert main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(images), "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main(["train", str(project), "--plan"]) == 0
    out = capsys.readouterr().out
    for part in ("Weights", "Gradients", "Optimizer state (AdamW)", "Activations (batch 4, 16 px)", "Total"):
        assert part in out
    assert " MB" in out or " GB" in out
    assert not any((project / "runs").glob("*"))  # nothing trained
    assert json.loads((project / "project.json").read_text())  # the project is as it was


@pytest.mark.slow
def test_plan_table_of_full_size_models(capsys):
    """SD 1.5 and SDXL from the bundled configs: full fine-tuning takes several times a LoRA's memory;
    checkpointing cuts the activations; SDXL's LoRA needs more than SD 1.5's."""
    from transferstudio.devtools.plan_table import plans

    rows = {(r["model"], r["method"], r["checkpointing"]): r["plan"] for r in plans()}
    sd_lora, sd_full = rows[("SD 1.5", "lora", False)], rows[("SD 1.5", "full", False)]
    xl_lora = rows[("SDXL", "lora", False)]
    assert sd_full.total > 2 * sd_lora.total
    assert rows[("SD 1.5", "lora", True)].activations < sd_lora.activations / 3
    assert xl_lora.weights > 2.5 * sd_lora.weights
