"""The sample project "Landscapes → cities": the bundled starter model and sample images,
with settings that show transfer on a CPU within a couple of minutes."""
from __future__ import annotations

import shutil
from pathlib import Path

from transferstudio.core.errors import ProjectError
from transferstudio.core.paths import resource
from transferstudio.project.config import TrainConfig
from transferstudio.project.project import PROJECT_FILE, create_project, load_project

SAMPLE_NAME = "Landscapes → cities"
SAMPLE_FOLDER = "landscapes-to-cities"
SAMPLE_VAE_NAME = "Landscapes → cities (VAE)"
SAMPLE_GAN_NAME = "Landscapes → cities (GAN)"


def starter_model() -> Path:
    return resource("starter")


def sample_images() -> Path:
    return resource("sample_images")


def starter_vae() -> Path:
    return resource("starter_vae")


def starter_gan() -> Path:
    return resource("starter_gan")


def sample_config(**overrides) -> TrainConfig:
    """Full fine-tuning of the tiny starter: the setting that transferred best within the demo's
    CPU budget. Measured by fine-tuning the shipped starter (v-prediction, 4500 pretraining steps)
    with these settings and scoring 64 DDIM-50 samples against the targets (SWD ×1e3, patterns /
    with colour): lr 5e-4 × 450 steps 81.7 / 109.9; on the 3000-step candidate lr 3e-4 129.9 / 182.8,
    5e-4 125.6 / 160.1, 1e-3 182.1 / 234.6 (all three with "leading" DDIM spacing)."""
    config = TrainConfig(method="full", steps=450, learning_rate=5e-4, batch_size=16, flip=True,
                         schedule="constant", warmup_steps=0, preview_every=75, preview_steps=25,
                         preview_seeds=list(range(1, 9)), checkpoint_every=150, keep_checkpoints=2,
                         seed=1234, ema=False)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def ensure_sample_project(parent_dir: Path, **overrides) -> Path:
    """Create the sample project under `parent_dir` (or return the existing one).

    The images are copied into the project so the person can edit captions or replace
    them without touching the installed files."""
    folder = Path(parent_dir) / SAMPLE_FOLDER
    if (folder / PROJECT_FILE).is_file():
        load_project(folder)  # raises a clear ProjectError if it is damaged
        return folder
    return create_sample_project(folder, **overrides)


def create_sample_project(folder: Path, **overrides) -> Path:
    return _create(folder, starter_model(), SAMPLE_NAME, sample_config(**overrides))


def _create(folder: Path, backbone: Path, name: str, config: TrainConfig) -> Path:
    folder = Path(folder)
    if not backbone.is_dir() or not sample_images().is_dir():
        raise ProjectError("The starter model or sample images are missing from this installation.",
                           "Reinstall TransferStudio.")
    images = folder / "images"
    shutil.copytree(sample_images(), images, dirs_exist_ok=True)
    create_project(folder, backbone=backbone, images=images, name=name, config=config)
    return folder


def sample_vae_config(**overrides) -> TrainConfig:
    """Decoder-only fine-tuning of the starter VAE on the sample cities (20 train, 4 held out for
    the previews), the setting of `transferstudio demo --family vae`. Measured on a 2-core CPU by
    fine-tuning the shipped starter VAE, training the same architecture from random weights
    (method "full") with the same settings, and reconstructing 64 held-out procedural cities
    (city_batch seeds 10000..10063; PSNR dB / SSIM; the starter before fine-tuning: 26.79 / 0.639).
    Batch 16, constant lr, fine-tuned vs from scratch:
    150 steps lr 3e-4: 28.51 / 0.684 vs 25.39 / 0.524 (scratch at lr 1e-3: 25.74 / 0.535);
    300 steps lr 3e-4: 28.35 / 0.680 vs 26.18 / 0.564 (scratch at lr 1e-3: 26.57 / 0.593; fine-tune
    at lr 1e-4: 28.53 / 0.683; a full fine-tune of the starter: 28.35 / 0.684; both with a cosine
    schedule: 28.54 / 0.684 vs 25.84 / 0.532);
    450 steps lr 3e-4: 28.18 / 0.673 vs 26.45 / 0.578 (lr 1e-3: 27.89 / 0.658 vs 27.09 / 0.634).
    The decoder-only fine-tune is at its best after 150-300 steps (more overfits the 20 pictures;
    lr 1e-3 loses another 0.3 dB at 450), while training from scratch keeps gaining, so longer
    demos show a smaller gap. 300 steps: 1 min 40 s for the whole demo on a 2-core CPU (decoder
    about 80 pictures/s, full about 55)."""
    config = TrainConfig(method="decoder", steps=300, learning_rate=3e-4, batch_size=16, flip=True,
                         schedule="constant", warmup_steps=0, preview_every=100, preview_seeds=[1, 2, 3, 4],
                         checkpoint_every=300, keep_checkpoints=1, seed=1234, ema=False)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def create_sample_vae_project(folder: Path, **overrides) -> Path:
    """The VAE variant of the sample project: the starter VAE (landscapes) and the sample cities."""
    return _create(folder, starter_vae(), SAMPLE_VAE_NAME, sample_vae_config(**overrides))


def sample_gan_config(**overrides) -> TrainConfig:
    """Adapting the starter GAN (generator and discriminator) to the 24 sample cities: the setting
    of `transferstudio demo --family gan`. Measured on a 2-core CPU (one thread per run, two runs at
    a time) by adapting the shipped starter GAN and scoring 256 samples against 256 held-out
    procedural cities (sliced Wasserstein ×1e3, colour counted / patterns; diversity; nearest
    training picture): 400 steps lr 2e-3 156.5 / 112.4, 0.100, 0.055; the same GAN from scratch
    450.6 / 242.9, 0.107, 0.088; lr 1e-3 167.2 / 115.4; FreezeD 2 blocks 161.6 / 114.4;
    consistency weight 5: 156.6 / 107.7 (50% slower steps); 600 steps 149.3 / 100.3. The demo's
    own run (two threads) is in the README."""
    config = TrainConfig(method="full", steps=400, learning_rate=2e-3, batch_size=16, flip=True, ema=True,
                         schedule="constant", warmup_steps=0, preview_every=50, preview_seeds=list(range(1, 17)),
                         checkpoint_every=400, keep_checkpoints=1, seed=1234, augment="adaptive")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def create_sample_gan_project(folder: Path, **overrides) -> Path:
    """The GAN variant of the sample project: the starter GAN (landscapes) and the sample cities."""
    return _create(folder, starter_gan(), SAMPLE_GAN_NAME, sample_gan_config(**overrides))
