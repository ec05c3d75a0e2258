"""Stable Diffusion checkpoint files as A1111/Forge/ComfyUI keep them: what a file is from its
safetensors header alone (`detect`), loading one offline with the bundled configs
(`single_file`), writing one (`original_layout`), and converting pickles safely (`pickles`).
The SD 1.x/2.x and SDXL family modules use these; the model library lists with `detect`."""
