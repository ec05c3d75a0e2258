# diffusers finds model, scheduler and pipeline classes by the names written in
# model_index.json / config.json ("UNet2DModel", "DDPMScheduler"), which static analysis
# cannot see: collect every submodule, its data files and its metadata (it checks versions
# through importlib.metadata at import time).
from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

# Flax and ONNX variants need libraries the app does not ship; leaving them out only
# silences the missing-module warnings, diffusers checks their availability itself.
hiddenimports = collect_submodules(
    "diffusers", filter=lambda name: "flax" not in name and "onnx" not in name)
datas = collect_data_files("diffusers") + copy_metadata("diffusers")
