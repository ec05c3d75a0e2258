# peft resolves tuner classes from PeftType names and checks its dependencies' versions
# through importlib.metadata when imported: collect all tuners and the metadata.
from PyInstaller.utils.hooks import collect_submodules, copy_metadata

hiddenimports = collect_submodules("peft")
datas = copy_metadata("peft")
