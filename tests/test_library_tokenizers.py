"""Bundled CLIP tokenizers give the ids open_clip's tokenizer gives, padded the way each family pads."""
from __future__ import annotations

import functools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import transformers  # noqa: E402

from transferstudio.backbones.sdfiles._paths import loading_root  # noqa: E402
from transferstudio.devtools.build_tokenizers import LAYOUT, build  # noqa: E402

EOT = 49407
PROMPTS = [
    "a cat",
    "(masterpiece:1.2), [cat], {dog}, ((best quality)), <lora:inkStyle:0.8>, (red hair:0.9)",
    "  multiple   spaces\tand\nnewlines and trailing   ",
    "Ünïcödé façade naïve café Ångström",
    "emoji 🐱🎨✨ 👩‍🎨 🇯🇵",
    "日本語のテキスト 中文 한국어 русский текст",
    "numbers 12345 3.14 1,000,000 2024-01-01 8k 4K uhd",
    "punctuation!!! ??? ... --- ;;; \"quoted\" 'single' it's don't we'll I'M",
    "masterpiece!! wow!",
    "A" * 300,
    " ".join(["a very long prompt with many words"] * 20),
    "MiXeD CaSe WORDS, CamelCase, snake_case, kebab-case",
    "",
    "   ",
    "<|startoftext|> <|endoftext|> typed in a prompt",
    "x",
    "oil painting of a lighthouse at dusk, by an artist, trending on artstation, 35mm, f/1.8",
]


@functools.lru_cache(maxsize=1)
def _reference():
    return open_clip.tokenizer.SimpleTokenizer()


def _open_clip_ids(text: str, pad: int) -> list[int]:
    ids = _reference()([text])[0].tolist()  # pads with 0
    end = ids.index(EOT)
    return ids[: end + 1] + [pad] * (len(ids) - end - 1)


@pytest.fixture(scope="module")
def bundled():
    from transformers import CLIPTokenizer

    root = loading_root()
    return {(key, sub): CLIPTokenizer.from_pretrained(root / key / sub) for key, subs in LAYOUT.items()
            for sub in subs}


def test_open_clip_get_tokenizer_is_the_simple_tokenizer():
    # The reference used below is what open_clip uses for ViT-L-14 (SD1), ViT-H-14 (SD2), ViT-bigG-14 (SDXL).
    for name in ("ViT-L-14", "ViT-H-14", "ViT-bigG-14"):
        assert isinstance(open_clip.get_tokenizer(name), open_clip.tokenizer.SimpleTokenizer)


@pytest.mark.parametrize("text", PROMPTS)
def test_bundled_tokenizers_match_open_clip(bundled, text):
    for (key, sub), tok in bundled.items():
        pad = 0 if LAYOUT[key][sub] == "!" else EOT
        got = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        assert got == _open_clip_ids(text, pad), (key, sub, text)


def test_special_tokens_per_family(bundled):
    for (key, sub), tok in bundled.items():
        assert (tok.bos_token_id, tok.eos_token_id, tok.model_max_length, len(tok)) == (49406, EOT, 77, 49408)
        if LAYOUT[key][sub] == "!":  # OpenCLIP: SD 2.x and SDXL's second encoder
            assert (tok.pad_token, tok.pad_token_id) == ("!", 0)
        else:  # OpenAI CLIP-L: SD 1.x and SDXL's first encoder
            assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", EOT)
    assert {("sdxl", "tokenizer"), ("sdxl", "tokenizer_2")} <= set(bundled)


def test_build_script_reproduces_the_bundled_files(tmp_path):
    build(tmp_path)
    root = loading_root()
    for key, subs in LAYOUT.items():
        for sub in subs:
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
                assert (tmp_path / key / sub / name).read_bytes() == (root / key / sub / name).read_bytes(), \
                    (key, sub, name)
    cfg = json.loads((root / "sd2" / "tokenizer" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "CLIPTokenizer" and cfg["pad_token"] == "!"
