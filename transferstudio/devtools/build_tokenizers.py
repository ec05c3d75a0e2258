"""Write the CLIP tokenizer files bundled under resources/loading/<key>/tokenizer*/.

The vocabulary is CLIP's byte-level BPE as shipped by open_clip (bpe_simple_vocab_16e6.txt.gz,
MIT licence). Both SD text-encoder families use the same vocabulary; they differ in padding:
OpenAI CLIP-L (SD 1.x, SDXL's first encoder) pads with <|endoftext|>, OpenCLIP (SD 2.x, SDXL's
second encoder) pads with "!" (id 0), as open_clip's tokenizer fills with zeros.

    python -m transferstudio.devtools.build_tokenizers [--out resources/loading]
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transferstudio.backbones.sdfiles._paths import loading_root

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77
# open_clip keeps this many merges: 49152 BPE entries minus the 256 byte tokens and 2 specials.
_N_MERGES = 49152 - 256 - 2
PAD_CLIP_L = EOS
PAD_OPENCLIP = "!"

# key -> {subfolder: pad token}
LAYOUT = {
    "sd1": {"tokenizer": PAD_CLIP_L},
    "sd2": {"tokenizer": PAD_OPENCLIP},
    "sd2-v": {"tokenizer": PAD_OPENCLIP},
    "sdxl": {"tokenizer": PAD_CLIP_L, "tokenizer_2": PAD_OPENCLIP},
    "sdxl-refiner": {"tokenizer_2": PAD_OPENCLIP},
}


def default_bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def _byte_alphabet() -> list[str]:
    """CLIP's byte -> printable-character table, in the order its vocabulary lists them."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_path or default_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1:1 + _N_MERGES]  # line 0 is a version banner
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49408, "unexpected CLIP vocabulary size"
    return vocab, merges


def write_tokenizer(folder: Path, pad_token: str, vocab: dict[str, int], merges: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        **special,
        "model_max_length": CONTEXT_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        # Treat special-token text typed in a prompt as plain text, as open_clip does; otherwise
        # OpenCLIP's pad "!" is cut out of "!!!" as three pad tokens instead of one BPE token.
        "split_special_tokens": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", "utf-8")


def build(out: Path | None = None, bpe_path: Path | None = None, keys: list[str] | None = None) -> list[Path]:
    out = out or loading_root()
    vocab, merges = vocab_and_merges(bpe_path)
    written = []
    for key in keys or list(LAYOUT):
        for sub, pad in LAYOUT[key].items():
            write_tokenizer(out / key / sub, pad, vocab, merges)
            written.append(out / key / sub)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="root holding <key>/ folders")
    parser.add_argument("--bpe", type=Path, default=None, help="bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args(argv)
    for folder in build(args.out, args.bpe):
        print(folder)


if __name__ == "__main__":
    main()
