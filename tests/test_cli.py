"""The command line as a user types it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from transferstudio.cli import main


def test_new_train_sample_export_inspect(tmp_path, tiny_ddpm, image_folder, capsys):
    project = tmp_path / "proj"
    assert main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder),
                 "--steps", "4", "--rank", "4", "--alpha", "8", "--trigger", "zq",
                 "--preview-every", "0"]) == 0
    data = json.loads((project / "project.json").read_text())
    assert data["config"]["rank"] == 4 and data["config"]["alpha"] == 8.0 and data["config"]["trigger"] == "zq"

    data["config"]["preview_steps"] = 2
    (project / "project.json").write_text(json.dumps(data))
    assert main(["train", str(project)]) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "loss" in out and "img/s" in out and "ETA" in out and "finished" in out

    # Asking for more steps continues the same run from its checkpoint.
    assert main(["train", str(project), "--steps", "6"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out

    assert main(["sample", str(project), "--seed", "3", "--out", str(tmp_path / "a.png"), "--steps", "3"]) == 0
    assert main(["sample", str(project), "--seed", "3", "--out", str(tmp_path / "b.png"), "--steps", "3",
                 "--base"]) == 0
    assert Image.open(tmp_path / "a.png").size == (16, 16)

    assert main(["export", str(project), "--out", str(tmp_path / "lora.safetensors")]) == 0
    assert (tmp_path / "lora.safetensors").is_file()
    # Never overwrite silently.
    assert main(["export", str(project), "--out", str(tmp_path / "lora.safetensors")]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["inspect", str(tiny_ddpm)]) == 0
    assert "Unconditional" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["new", "train", "demo", "export", "sample"])
def test_every_help_page_prints(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_dora_is_a_switch_of_new(tmp_path, tiny_ddpm, image_folder):
    project = tmp_path / "proj"
    assert main(["new", str(project), "--backbone", str(tiny_ddpm), "--images", str(image_folder), "--dora"]) == 0
    assert json.loads((project / "project.json").read_text())["config"]["dora"] is True


@pytest.mark.parametrize("argv, words", [
    (["train", "{tmp}/missing"], "No project found"),
    (["new", "{tmp}/p", "--backbone", "{tmp}", "--images", "{tmp}"], "does not recognise"),
    (["sample", "{tmp}/missing", "--out", "{tmp}/x.png"], "No project found"),
])
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, argv, words):
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1


def test_damaged_project_file_is_explained(tmp_path, capsys):
    (tmp_path / "project.json").write_text("{ not json")
    assert main(["train", str(tmp_path)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_python_dash_m_and_inspect_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "transferstudio", "inspect", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "Usable:      no" in result.stdout


def test_inspect_explains_a_lora_file_and_convert_pickle_makes_safetensors(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, lora)
    assert main(["inspect", str(lora)]) == 1
    assert "LoRA" in capsys.readouterr().out

    src = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, src)
    assert main(["convert-pickle", str(src)]) == 0
    assert torch.equal(load_file(tmp_path / "old.safetensors")["w"], torch.ones(2))
