"""The memory plan: how much GPU memory a run will take, told before it starts.

Nothing is loaded and nothing is computed: the family builds the model from its configs with every
weight on the meta device (`Family.skeleton`), the run's own `Trainee` puts its adapters on it,
and the backbone's own `to()` gives each part the number format training gives it. From there:

- weights, gradients, optimizer state and the EMA are counted from the real parameter shapes
  (optimizer state by each optimizer's own rule, per parameter shape);
- activations are measured by running the run's real objective (the family's training loss) once
  on fake tensors (torch's FakeTensorMode: shapes and dtypes, no memory), with autocast as the GPU
  would apply it, and adding up the tensors the autograd graph still holds at the end of the
  forward pass — what backward needs. Attention is counted as the fused kernels GPUs and CPUs
  run keep it (queries, keys, values, output and a log-sum-exp per row, not the n×n matrix),
  and layer/group norms run in fp32 as CUDA's autocast runs them;
- a CUDA context and workspace allowance is added on GPUs.

Measured against real CPU runs of the tiny test models in tests/test_memory_plan.py (README:
"Memory plan"). Engine code: no Qt.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from torch import nn

from transferstudio.core.errors import UserError
from transferstudio.project.config import TrainConfig

GIB = 1024 ** 3
CUDA_CONTEXT_BYTES = 640 * 1024 ** 2  # CUDA context, kernels and cuBLAS/cuDNN workspaces (typical, torch 2.x)
ALLOCATOR_SLACK = 0.08  # the caching allocator's rounding and fragmentation, and backward's temporaries
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps smaller tensors' state in fp32
BNB_BLOCK = 256  # bitsandbytes' blockwise quantisation: one fp32 scale per block
PERIODIC_STEPS = 16  # the trace takes a step that is a multiple of this (terms taken every 2, 4, 8, 16 steps run)

# Settings that change how much memory activations take; the rest (steps, learning rate, optimizer,
# previews…) leave them as they are, so a measure is reused when only those change.
ACTIVATION_SETTINGS = (
    "method", "adapter", "rank", "conv_rank", "layers", "dora", "train_text_encoder", "resolution",
    "batch_size", "gradient_checkpointing", "precision", "fp8_base", "class_pictures", "masked_loss",
    "discriminator_start", "consistency_weight", "freeze_discriminator_blocks", "r1_gamma", "augment",
)
# Settings that change which weights exist, which train, or their number format.
WEIGHT_SETTINGS = (
    "method", "adapter", "rank", "conv_rank", "layers", "dora", "train_text_encoder", "precision", "fp8_base",
    "discriminator_start", "consistency_weight", "freeze_discriminator_blocks",
)
OPTIMIZER_LABELS = {"adamw": "AdamW", "adamw8bit": "AdamW 8-bit", "adafactor": "Adafactor", "prodigy": "Prodigy"}


@dataclass(frozen=True)
class MemoryPlan:
    """The estimated peak memory of a run, by part (bytes), and what to change when it does not fit."""

    weights: int  # every weight on the device: frozen parts in their training number format, trained ones fp32
    gradients: int  # one per trained weight
    optimizer: int  # the optimizer's state
    ema: int  # the weight average (EMA), when kept
    activations: int  # what the forward pass keeps for backward, for the whole batch
    overhead: int  # CUDA context and workspace, allocator slack
    device: str  # "cuda" | "cpu": what the plan is for
    precision: str  # "fp32" | "bf16" | "fp16": how the run computes there
    trainable_parameters: int
    frozen_parameters: int
    resolution: int
    batch_size: int
    optimizer_name: str = "adamw"
    free: int | None = None  # the free memory it was compared with
    advice: tuple[str, ...] = ()  # what to change when it does not fit, biggest saving first

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations + self.overhead

    def fits(self) -> bool | None:
        """Whether it fits the free memory it was compared with (None: nothing to compare)."""
        return None if self.free is None else self.total <= self.free

    def parts(self) -> list[tuple[str, int]]:
        rows = [("Weights", self.weights), ("Gradients", self.gradients),
                (f"Optimizer state ({OPTIMIZER_LABELS.get(self.optimizer_name, self.optimizer_name)})",
                 self.optimizer)]
        if self.ema:
            rows.append(("Weight average (EMA)", self.ema))
        rows.append((f"Activations (batch {self.batch_size}, {self.resolution} px)", self.activations))
        rows.append(("CUDA context and workspace" if self.device == "cuda" else "Allocator slack", self.overhead))
        return rows

    def summary(self) -> str:
        """One line: "7.9 GB of 12.0 GB free — fits"."""
        where = "GPU memory" if self.device == "cuda" else "memory"
        text = f"Estimated {where}: {gb(self.total)}"
        if self.free is not None:
            text += f" of {gb(self.free)} free — {'fits' if self.fits() else 'does not fit'}"
        return text

    def describe(self) -> str:
        """The plan as `transferstudio train --plan` prints it."""
        width = max(len(label) for label, _ in self.parts()) + 2
        lines = [f"Memory plan ({self.precision}, {self.trainable_parameters:,} trained and "
                 f"{self.frozen_parameters:,} frozen weights, on a {'CUDA GPU' if self.device == 'cuda' else 'CPU'}):"]
        lines += [f"  {label:<{width}}{gb(size):>9}" for label, size in self.parts()]
        lines.append(f"  {'Total':<{width}}{gb(self.total):>9}")
        if self.free is not None:
            lines.append(f"Free GPU memory: {gb(self.free)} — {'fits' if self.fits() else 'does not fit'}")
        if self.advice:
            lines.append("To fit:" if not self.fits() else "To use less:")
            lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


def gb(n: float) -> str:
    """Bytes as "7.9 GB" (GiB, as GPU tools and card names count them); below 0.1 GB as "35 MB"."""
    if abs(n) < 0.1 * GIB:
        return f"{n / 1024 ** 2:.0f} MB" if abs(n) >= 1024 ** 2 else f"{n / 1024 ** 2:.2f} MB"
    return f"{n / GIB:.1f} GB"


@dataclass(frozen=True)
class GPUMemory:
    name: str
    free: int
    total: int


def detect_gpu() -> GPUMemory | None:
    """The CUDA GPU training would use, with its free and total memory; None without one."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return GPUMemory(name=torch.cuda.get_device_name(), free=int(free), total=int(total))


# --- counting ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Measure:
    weights: int
    gradients: int
    optimizer: int
    ema: int
    activations: int
    trainable: int
    frozen: int


class _Shape:
    """A parameter's shape and number format (all the optimizer rules read), shaped like a tensor."""

    __slots__ = ("shape", "_element_size")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape = tuple(tensor.shape)
        self._element_size = tensor.element_size()

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return self._element_size


@dataclass
class _Weights:
    """What a run's weights take, whatever its optimizer: the bytes on the device, the trained
    weights by optimizer phase (with the phase's betas), and the EMA's copy when one is kept."""

    weights: int
    gradients: int
    phases: list[tuple[list[_Shape], tuple[float, float]]]
    ema: int
    ema_objective: Any
    trainable: int
    frozen: int
    native: int

    def wants_ema(self, config: TrainConfig) -> bool:
        return bool(self.ema) and self.ema_objective.wants_ema(config)


def optimizer_state_bytes(kind: str, params: list[Any], betas: tuple[float, float] = (0.9, 0.999)) -> int:
    """The state `kind` (TrainConfig.optimizer) keeps for these parameters, by its own rule:
    AdamW two moments per weight; 8-bit AdamW one byte each (plus a scale per 256, and fp32 for
    small tensors); Adafactor a row and a column per matrix (the last two dimensions), the whole
    second moment for vectors, plus the first moment when β1 is set; Prodigy its moments, `s` and
    the starting weights `p0`."""
    total = 0
    for p in params:
        n, size = p.numel(), p.element_size()
        if kind == "adamw8bit":
            total += 2 * (n + 4 * math.ceil(n / BNB_BLOCK)) if n >= BNB_MIN_8BIT_SIZE else 2 * n * 4
        elif kind == "adafactor":
            shape = tuple(p.shape)
            if len(shape) >= 2:
                total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:]))
            else:
                total += 4 * n
            if betas[0]:
                total += 4 * n
        elif kind == "prodigy":
            total += size * n * (3 + (1 if betas[0] > 0 else 0))
        else:  # AdamW: exp_avg and exp_avg_sq in the weight's format
            total += 2 * size * n
    return total


def _modules_of(backbone: Any) -> list[nn.Module]:
    """Every module a backbone holds (what its `to()` puts on the device): its attributes that are
    modules or lists of modules."""
    found: list[nn.Module] = []
    for value in vars(backbone).values():
        items = value if isinstance(value, (list, tuple)) else (value,)
        found += [m for m in items if isinstance(m, nn.Module)]
    return found


def _unique_tensors(modules: list[nn.Module]) -> Iterator[tuple[nn.Module, str, torch.Tensor, bool]]:
    """(module, name, tensor, is_parameter) for every parameter and buffer, each tensor once."""
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            for table, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in table.items():
                    if tensor is not None and id(tensor) not in seen:
                        seen.add(id(tensor))
                        yield module, name, tensor, is_param


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# --- activations, measured on fake tensors ------------------------------------------------------------

class _FusedAttention(torch.autograd.Function):
    """Stands for F.scaled_dot_product_attention as fused kernels keep it for backward: q, k, v,
    the output and one fp32 log-sum-exp per query row (the math path would keep the n×n matrix)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _AsOnGPU(torch.overrides.TorchFunctionMode):
    """Makes the fake CPU forward keep what a GPU run keeps: fused attention, and under autocast
    layer/group norms in fp32 (CUDA's autocast runs them so; the CPU's runs them in bf16)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        import torch.nn.functional as F

        if func is F.scaled_dot_product_attention:
            given = dict(zip(("query", "key", "value"), args))
            q, k, v = (given.get(name, kwargs.get(name)) for name in ("query", "key", "value"))
            if torch.is_autocast_enabled("cpu"):
                low = torch.get_autocast_dtype("cpu")
                q, k, v = q.to(low), k.to(low), v.to(low)
            return _FusedAttention.apply(q, k, v)
        if func in (F.group_norm, F.layer_norm) and torch.is_autocast_enabled("cpu"):
            def up(x: Any) -> Any:
                return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

            with torch.autocast("cpu", enabled=False):
                return func(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


class _LiveTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Notes every storage the forward makes (weakly), so the bytes still alive at its end — what
    the autograd graph holds — can be added up. Reading a number out of a tensor (`.item()`, a
    loss logged as float) gives 0: fake tensors hold none."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.existing = existing  # storages made before (the weights): views of them take no memory
        self.made: list[tuple[Any, int]] = []  # (weak reference, bytes) of every storage made

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        aten = torch.ops.aten
        if func in (aten._local_scalar_dense.default, aten.is_nonzero.default):
            return 0
        out = func(*args, **(kwargs or {}))
        from torch.multiprocessing.reductions import StorageWeakRef

        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.existing:
                    self.made.append((StorageWeakRef(storage), storage.nbytes()))
        return out

    def alive(self) -> int:
        # By storage, among the living only: a freed storage's address may be taken by a new one.
        living = {ref.cdata: size for ref, size in self.made if not ref.expired()}
        return sum(living.values())


def _to_fake(modules: list[nn.Module], mode: Any) -> None:
    """Replace every meta weight with a fake CPU tensor of the same shape, format and grad flag
    (shared weights stay shared)."""
    made: dict[int, torch.Tensor] = {}
    with mode:
        for module, name, tensor, is_param in list(_unique_tensors(modules)):
            made[id(tensor)] = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
        for root in modules:
            for module in root.modules():
                for table, is_param in ((module._parameters, True), (module._buffers, False)):
                    for name, tensor in list(table.items()):
                        if tensor is None:
                            continue
                        new = made[id(tensor)]
                        if is_param and not isinstance(new, nn.Parameter):
                            new = nn.Parameter(new, requires_grad=tensor.requires_grad)
                            made[id(tensor)] = new
                        table[name] = new


def _fake_batch(size: int, resolution: int, prior: bool) -> Any:
    batch = SimpleNamespace(pixels=torch.empty(size, 3, resolution, resolution),
                            captions=["a photo of the subject"] * size,
                            original_sizes=[(resolution, resolution)] * size, crop_top_left=[(0, 0)] * size,
                            target_size=(resolution, resolution), masks=None, prior=None, keys=None)
    if prior:
        batch.prior = _fake_batch(size, resolution, False)
    return batch


def _count_weights(backbone: Any, trainee: Any, objective: Any, fp8: list[torch.Tensor] = ()) -> _Weights:
    """`fp8`: frozen weights kept in 8-bit floats (one byte each, whatever their format here)."""
    trained = list(trainee.parameters())
    trained_ids = {id(p) for p in trained}
    tensors = list(_unique_tensors(_modules_of(backbone)))
    saved = sum(t.numel() * (t.element_size() - 1) for t in {id(t): t for t in fp8}.values())
    roles = objective.ema_roles()
    full = trainee.full_roles()
    roles = full if roles is None else [r for r in roles if r in full]
    return _Weights(weights=_bytes(t for _, _, t, _ in tensors) - saved, gradients=_bytes(trained),
                    phases=[([_Shape(p) for p in trainee.role_parameters(phase.roles)], phase.betas)
                            for phase in objective.phases],
                    ema=_bytes(trainee.role_parameters(roles)) if roles else 0, ema_objective=objective,
                    trainable=sum(p.numel() for p in trained),
                    frozen=sum(t.numel() for _, _, t, is_param in tensors if is_param and id(t) not in trained_ids),
                    native=int(backbone.caps.native_resolution or 0))


def _traced_step(config: TrainConfig) -> int:
    """The step the trace takes: one where a discriminator that starts late is on (when the run
    reaches it) and terms taken every few steps (a GAN's R1, every 16) are taken: the run's peak."""
    late = int(getattr(config, "discriminator_start", 0) or 0)
    return PERIODIC_STEPS * math.ceil((late + 1) / PERIODIC_STEPS) if late < config.steps else PERIODIC_STEPS


def _trace(backbone: Any, trainee: Any, objective: Any, config: TrainConfig, *, resolution: int, amp: torch.dtype | None) -> int:
    """The most any phase of one training step keeps for backward, from one fake step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from transferstudio.backbones.objective import StepContext

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _to_fake(_modules_of(backbone), mode)
    if hasattr(backbone, "device"):
        backbone.device = torch.device("cpu")
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    trainee.train_mode(True)
    step = _traced_step(config)
    ctx = StepContext(step=step, device=torch.device("cpu"), amp=amp, generator=None, config=config)
    most = 0
    with mode:
        batch = _fake_batch(int(config.batch_size), resolution,
                            prior=bool(config.class_pictures) and backbone.caps.objective == "diffusion")
        active = [phase for phase in objective.phases if objective.active(phase, step)]
        existing = {t.untyped_storage()._cdata for _, _, t, _ in _unique_tensors(_modules_of(backbone))}
        for index, phase in enumerate(active):
            tracker = _LiveTensors(existing)
            with _AsOnGPU(), tracker:
                loss = objective.loss(phase, batch, ctx)
                gc.collect()
                most = max(most, tracker.alive())
                if index < len(active) - 1:  # the next phase starts after this one's backward
                    loss.backward()
                    for p in trainee.parameters():
                        p.grad = None
            del loss
    return most


# --- the planner ----------------------------------------------------------------------------------------

def resolved_precision(config: TrainConfig, device: str) -> str:
    """The number format a run computes in (the trainer's rules): fp32 on a CPU; on a GPU bf16 for
    "auto" where the GPU has it (assumed when there is none here to ask)."""
    if device == "cpu" or config.precision == "fp32":
        return "fp32"
    if config.precision in ("bf16", "fp16"):
        return config.precision
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MemoryPlanner:
    """Plans runs of one model. Measures are kept, so planning again after a setting changed
    costs only what that setting changes (the activations are measured again only when a setting
    that shapes them changed)."""

    def __init__(self, backbone: str | Path, *, family: str | None = None, device: str = "cuda",
                 any_method: bool = False) -> None:
        """`family`: the registry key, when `backbone` is a configs-only folder `inspect` would not
        call usable (the bundled ones). `any_method`: plan methods the family does not offer (full
        fine-tuning of SDXL), to show what they would take."""
        from transferstudio.backbones.registry import family as family_of, inspect_backbone

        self.path = Path(backbone).expanduser()
        if family is None:
            found = inspect_backbone(self.path)
            if not found.usable or found.family is None:
                raise UserError(found.problems[0] if found.problems else f"{self.path} is not a usable model.",
                                "Pick a model TransferStudio can train (`transferstudio inspect PATH`).")
            family = found.family
        self.family = family_of(family)
        self.device = device
        self.any_method = any_method
        self._activations: dict[tuple, int] = {}
        self._weights: dict[tuple, _Weights] = {}
        self._native: int | None = None

    # --- public --------------------------------------------------------------------------
    def plan(self, config: TrainConfig, *, free: int | None = None, advise: bool = True) -> MemoryPlan:
        measure, native = self._measure(config)
        plan = self._plan_of(config, measure, native, free)
        if advise and free is not None and not plan.fits():
            plan = replace(plan, advice=tuple(self._advice(config, plan, native)))
        return plan

    def native_resolution(self) -> int:
        if self._native is None:
            self._native = int(self._skeleton().caps.native_resolution or 0)
        return self._native

    # --- measuring -----------------------------------------------------------------------
    def _skeleton(self) -> Any:
        with torch.device("meta"):
            return self.family.skeleton(self.path)

    def _plan_of(self, config: TrainConfig, m: _Measure, native: int, free: int | None) -> MemoryPlan:
        overhead = int(ALLOCATOR_SLACK * (m.activations + m.gradients))
        if self.device == "cuda":
            overhead += CUDA_CONTEXT_BYTES
        return MemoryPlan(weights=m.weights, gradients=m.gradients, optimizer=m.optimizer, ema=m.ema,
                          activations=m.activations, overhead=overhead, device=self.device,
                          precision=resolved_precision(config, self.device), trainable_parameters=m.trainable,
                          frozen_parameters=m.frozen, resolution=int(config.resolution or native),
                          batch_size=int(config.batch_size), optimizer_name=config.optimizer, free=free)

    def _measure(self, config: TrainConfig) -> tuple[_Measure, int]:
        weight_key = tuple((name, getattr(config, name)) for name in WEIGHT_SETTINGS) + (self.device,)
        activation_key = tuple((name, getattr(config, name)) for name in ACTIVATION_SETTINGS) + \
            (self.device, _traced_step(config))
        if weight_key not in self._weights or activation_key not in self._activations:
            backbone, trainee, objective = self._prepared(config)  # one model serves both measures
            if weight_key not in self._weights:
                self._weights[weight_key] = _count_weights(backbone, trainee, objective,
                                                           fp8=self._fp8_weights(backbone, config))
            if activation_key not in self._activations:
                precision = resolved_precision(config, self.device)
                self._activations[activation_key] = _trace(
                    backbone, trainee, objective, config,
                    resolution=int(config.resolution or backbone.caps.native_resolution or 0),
                    amp=_DTYPES[precision] if precision != "fp32" else None)
        weights, activations = self._weights[weight_key], self._activations[activation_key]
        self._native = weights.native
        optimizer = sum(optimizer_state_bytes(config.optimizer, params, betas) for params, betas in weights.phases)
        return _Measure(weights=weights.weights, gradients=weights.gradients, optimizer=optimizer,
                        ema=weights.ema if weights.wants_ema(config) else 0, activations=activations,
                        trainable=weights.trainable, frozen=weights.frozen), weights.native

    def _fp8_weights(self, backbone: Any, config: TrainConfig) -> list[torch.Tensor]:
        """The frozen weights a GPU run keeps in fp8 (`fp8_base`; the trainer's own choice of layers).
        The trace runs without the casting hooks: a layer's compute-format copy lives only while
        the layer runs."""
        if not getattr(config, "fp8_base", False) or self.device != "cuda" or config.method != "lora" \
                or resolved_precision(config, self.device) == "fp32":
            return []
        from transferstudio.training.low_memory import fp8_layers

        return [p for layer in fp8_layers(backbone) for p in layer.parameters(recurse=False)]

    def _prepared(self, config: TrainConfig) -> tuple[Any, Any, Any]:
        """(backbone, trainee, objective) of a run with `config`, on the meta device, each part in
        the number format training gives it."""
        from transferstudio.adapt.trainee import Trainee

        low = _DTYPES[resolved_precision(config, self.device)]
        meta = torch.device("meta")
        backbone = self._skeleton()
        if self.any_method and config.method not in backbone.caps.methods:
            backbone.caps = replace(backbone.caps, supports_full_finetune=True,
                                    methods=tuple(dict.fromkeys((*backbone.caps.methods, config.method))))
        backbone.to(meta, low)  # its device is now meta: what `configure` builds goes there too
        with torch.device("meta"):
            trainee = Trainee(backbone, config)
        backbone.to(meta, low)  # again, with the adapters on: trained text encoders stay fp32
        return backbone, trainee, backbone.objective(config)

    # --- advice ------------------------------------------------------------------------------
    def _advice(self, config: TrainConfig, plan: MemoryPlan, native: int) -> list[str]:
        """Single changes that save memory, biggest saving first, each with what it saves and
        whether it alone makes the run fit."""
        caps = self._skeleton().caps
        options: list[tuple[str, TrainConfig]] = []

        def option(text: str, **changes: Any) -> None:
            options.append((text, replace(config, **changes)))

        if config.batch_size > 1:
            accumulate = config.batch_size * config.gradient_accumulation
            option(f"batch {config.batch_size} → 1 (gradient accumulation {accumulate} keeps the step's pictures)",
                   batch_size=1, gradient_accumulation=accumulate)
        if not config.gradient_checkpointing and caps.objective != "adversarial":
            option("gradient checkpointing on (about 30% slower)", gradient_checkpointing=True)
        if config.method != "lora" and "lora" in caps.methods:
            option("LoRA instead of full fine-tuning", method="lora", ema=False)
        if config.optimizer in ("adamw", "prodigy") and self.device == "cuda":
            option("AdamW 8-bit optimizer", optimizer="adamw8bit")
        if config.optimizer != "adafactor":
            option("Adafactor optimizer", optimizer="adafactor")
        if config.train_text_encoder and config.method == "lora":
            option("text encoder not trained", train_text_encoder=False)
        if config.ema and config.method != "lora":
            option("weight average (EMA) off", ema=False)
        if self.device == "cuda" and plan.precision == "fp32":
            option("bf16 instead of fp32", precision="bf16")
        if config.class_pictures:
            option("prior preservation (class pictures) off", class_pictures=0)
        resolution = int(config.resolution or native)
        multiple = max(1, int(caps.resolution_multiple or 1))
        smaller = int(resolution * 0.75) // multiple * multiple
        if not caps.fixed_resolution and smaller >= max(multiple, native // 4 if native else multiple):
            option(f"resolution {resolution} → {smaller} px", resolution=smaller)

        results = []
        for text, changed in options:
            try:
                other = self.plan(changed, free=plan.free, advise=False)
            except UserError:  # a change this model refuses (a method it does not offer)
                continue
            saved = plan.total - other.total
            if saved > 0.01 * (plan.total - plan.overhead):  # worth a change
                results.append((saved, f"−{gb(saved)}: {text}" + (" — then it fits" if other.fits() else "")))
        results.sort(key=lambda r: -r[0])
        return [text for _, text in results]


def plan_memory(backbone: str | Path, config: TrainConfig, *, device: str | None = None,
                free: int | None = None, advise: bool = True) -> MemoryPlan:
    """The plan of one run of the model at `backbone` with `config`. `device` None: a CUDA GPU unless
    the settings say CPU; `free` None: the detected GPU's free memory (none on the CPU)."""
    if device is None:
        device = "cpu" if config.device == "cpu" else "cuda"
    if free is None and device == "cuda":
        found = detect_gpu()
        free = found.free if found is not None else None
    return MemoryPlanner(backbone, device=device).plan(config, free=free, advise=advise)


def print_plan(project: Any) -> int:
    """`transferstudio train PROJECT --plan`: the plan of the project's settings, then exit."""
    config = project.config
    device = "cpu" if config.device == "cpu" else "cuda"
    gpu = detect_gpu() if device == "cuda" else None
    planner = MemoryPlanner(project.backbone, device=device)
    plan = planner.plan(config, free=gpu.free if gpu else None)
    print(f"{project.name}: {config.method}, batch {config.batch_size}, "
          f"{config.resolution or planner.native_resolution()} px, {config.optimizer}"
          f"{', gradient checkpointing' if config.gradient_checkpointing else ''}")
    print(plan.describe())
    if device == "cuda" and gpu is None:
        print("No CUDA GPU found here: the figures are for a GPU; compare them with its memory.")
    elif gpu is not None:
        print(f"GPU: {gpu.name}, {gb(gpu.total)} in all")
    return 0


__all__ = ["MemoryPlan", "MemoryPlanner", "GPUMemory", "detect_gpu", "plan_memory", "print_plan",
           "optimizer_state_bytes", "gb", "GIB"]
