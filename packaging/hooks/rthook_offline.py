# Runtime hook: runs in the frozen app before any of its code.
# The installed app never reaches a network, whatever the person's environment says
# (another tool's setup may have left HF_HUB_OFFLINE=0): model loading stays on local files.
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
