"""Developer tools, not shipped in the installers (the PyInstaller spec excludes this package).

- `python -m transferstudio.devtools.bench`: training speed and memory figures.
- `python -m transferstudio.devtools.measure_stall`: how long the window's event loop stalls while training.
- `python -m transferstudio.devtools.build_tokenizers`: writes the CLIP tokenizer files under resources/loading/.
- `python -m transferstudio.devtools.pretrain`: pretrains the starter model under resources/starter/.
- `transferstudio.devtools.demo_project.make_demo_project`: a small self-built project for measuring.

Shipped code never imports this package (an import-linter contract in pyproject.toml checks it);
these tools import the shipped package, not the other way round.
"""
