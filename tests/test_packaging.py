"""Packaging: resources are found the same way in a source checkout, an installed wheel and a
frozen build, and the self-check tells a whole installation from a broken one.

The real frozen build is slow and not part of this suite: `bash packaging/build.sh --check`
(see packaging/README.md).
"""
from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from transferstudio.core import paths

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"


@pytest.fixture()
def no_override(monkeypatch):
    monkeypatch.delenv("TRANSFERSTUDIO_RESOURCES", raising=False)
    monkeypatch.delattr(sys, "frozen", raising=False)
    monkeypatch.delattr(sys, "_MEIPASS", raising=False)


# ---------------------------------------------------------------- resource lookup, three modes
def test_source_checkout_uses_the_repository_resources(no_override):
    assert paths.resources_dir() == REPO / "resources"
    assert paths.resource("icons", "transferstudio.png").is_file()


def test_installed_wheel_uses_the_package_data(no_override, tmp_path):
    # An installed layout: site-packages/transferstudio/{core/paths.py, _resources/} and no
    # resources/ beside the package. The same paths.py, loaded from there, must find _resources.
    site = tmp_path / "site-packages"
    (site / "transferstudio" / "core").mkdir(parents=True)
    shutil.copy(paths.__file__, site / "transferstudio" / "core" / "paths.py")
    (site / "transferstudio" / "_resources" / "starter").mkdir(parents=True)
    spec = importlib.util.spec_from_file_location("installed_paths", site / "transferstudio" / "core" / "paths.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.resources_dir() == site / "transferstudio" / "_resources"
    assert installed.resource("starter").is_dir()


def test_frozen_build_uses_the_bundle(no_override, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert paths.resources_dir() == tmp_path / "resources"
    assert paths.resource("starter") == tmp_path / "resources" / "starter"


def test_frozen_without_meipass_is_not_treated_as_a_bundle(no_override, monkeypatch):
    # Other freezers (cx_Freeze, py2exe) set sys.frozen without _MEIPASS.
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert paths.resources_dir() == REPO / "resources"


def test_environment_override_wins_everywhere(no_override, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path / "bundle"), raising=False)
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(tmp_path / "mine"))
    assert paths.resources_dir() == tmp_path / "mine"


@pytest.mark.slow
def test_built_wheel_ships_the_resources(tmp_path):
    """`pip wheel .` puts resources/ into the wheel as transferstudio/_resources (~15 s)."""
    import zipfile

    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(REPO)], check=True, cwd=tmp_path)
    names = zipfile.ZipFile(next(out.glob("*.whl"))).namelist()
    assert "transferstudio/_resources/icons/transferstudio.png" in names
    assert "transferstudio/_resources/starter/model_index.json" in names


# ---------------------------------------------------------------- self-check
@pytest.fixture()
def tiny_resources(tmp_path, tiny_ddpm, monkeypatch):
    """A resources folder with the tiny test model as the starter: the real checks, in seconds."""
    from tiny_ddpm import make_images

    root = tmp_path / "resources"
    shutil.copytree(tiny_ddpm, root / "starter")
    make_images(root / "sample_images", n=4, size=16)
    (root / "loading" / "sd1").mkdir(parents=True)
    (root / "loading" / "sd1" / "model_index.json").write_text("{}")
    shutil.copytree(REPO / "resources" / "icons", root / "icons")
    monkeypatch.setenv("TRANSFERSTUDIO_RESOURCES", str(root))
    monkeypatch.setenv("TRANSFERSTUDIO_HOME", str(tmp_path / "home"))
    return root


def test_self_check_passes_on_a_whole_installation(tiny_resources, tmp_path):
    from transferstudio.selfcheck import run_self_check

    lines: list[str] = []
    assert run_self_check(lines.append, workdir=tmp_path / "work") is True
    checks = lines[1:-1]
    assert lines[-1].startswith("PASS")
    assert all(line.split()[0] in ("ok", "warn") for line in checks), "\n".join(lines)
    names = {line[5:].split(": ", 1)[0] for line in checks}
    assert {"offline", "imports (torch)", "torchvision operators", "main window", "load starter model",
            "train (full fine-tune)", "load export (full fine-tune)", "train (LoRA)", "load export (LoRA)",
            "network"} <= names
    assert (tmp_path / "work" / "exports" / "full-model" / "model_index.json").is_file()
    assert (tmp_path / "work" / "exports" / "adapter.safetensors").is_file()


def test_self_check_fails_when_a_library_is_missing(tiny_resources, tmp_path, monkeypatch):
    from transferstudio import selfcheck

    groups = dict(selfcheck.IMPORT_GROUPS)
    groups["diffusion libraries"] = (*groups["diffusion libraries"], "transferstudio_not_a_library")
    monkeypatch.setattr(selfcheck, "IMPORT_GROUPS", groups)
    report = tmp_path / "report.txt"
    assert selfcheck.main(["--report", str(report), "--workdir", str(tmp_path / "work")]) == 1

    text = report.read_text()
    summary, _, details = text.partition("\nDetails of the failures:\n")
    assert "Traceback" in details and "transferstudio_not_a_library" in details  # for support
    lines = summary.strip().splitlines()
    by_name = {line[5:].split(": ", 1)[0]: line for line in lines[1:-1]}
    assert by_name["imports (diffusion libraries)"].startswith("FAIL")
    assert "transferstudio_not_a_library" in by_name["imports (diffusion libraries)"]
    assert by_name["load starter model"].startswith("skip")  # what needs the library is not attempted
    assert by_name["imports (torch)"].startswith("ok")
    assert lines[-1].startswith("FAIL") and "imports (diffusion libraries)" in lines[-1]


def test_self_check_fails_when_the_starter_model_is_missing(tiny_resources, tmp_path):
    from transferstudio.selfcheck import run_self_check

    shutil.rmtree(tiny_resources / "starter")
    lines: list[str] = []
    assert run_self_check(lines.append, workdir=tmp_path / "work") is False
    assert any(line.startswith("FAIL resources") and "starter" in line for line in lines)


def test_network_guard_refuses_remote_hosts_and_allows_loopback():
    from transferstudio.selfcheck import NetworkGuard

    original = socket.socket.connect
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with NetworkGuard() as guard:
            with pytest.raises(OSError):
                socket.create_connection(("huggingface.co", 443), timeout=1)
            with socket.socket() as remote, pytest.raises(OSError):
                remote.connect(("93.184.215.14", 80))
            socket.create_connection(server.getsockname(), timeout=1).close()
    assert "huggingface.co" in guard.attempts and any("93.184.215.14" in a for a in guard.attempts)
    assert len(guard.attempts) == 2, "loopback is not network use"
    assert socket.socket.connect is original, "the guard puts the socket functions back"


# ---------------------------------------------------------------- the frozen entry script
def _launcher(monkeypatch, executable: str, argv: list[str]):
    spec = importlib.util.spec_from_file_location("ts_launcher", PACKAGING / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "executable", executable)
    monkeypatch.setattr(sys, "argv", [executable, *argv])
    return module


def test_launcher_routes_by_executable_name_and_self_check_flag(monkeypatch):
    import transferstudio.app
    import transferstudio.cli
    import transferstudio.selfcheck

    calls = []
    monkeypatch.setattr(transferstudio.selfcheck, "main", lambda argv: calls.append(("check", argv)) or 0)
    monkeypatch.setattr(transferstudio.cli, "main", lambda argv: calls.append(("cli", argv)) or 0)
    monkeypatch.setattr(transferstudio.app, "main", lambda argv: calls.append(("app", argv[1:])) or 0)

    assert _launcher(monkeypatch, "/opt/TransferStudio/transferstudio-cli", ["--self-check"]).main() == 0
    assert _launcher(monkeypatch, "/opt/TransferStudio/transferstudio-cli", ["train", "p"]).main() == 0
    assert _launcher(monkeypatch, r"C:\TransferStudio\TransferStudio.exe", ["--self-check", "--workdir", "w"]).main() == 0
    assert _launcher(monkeypatch, "/opt/TransferStudio/TransferStudio", ["my-project"]).main() == 0
    assert calls == [("check", []), ("cli", ["train", "p"]), ("check", ["--workdir", "w"]), ("app", ["my-project"])]


def test_packaging_scripts_are_valid_python():
    for path in [PACKAGING / "transferstudio.spec", PACKAGING / "launcher.py", PACKAGING / "make_icon.py",
                 *sorted((PACKAGING / "hooks").glob("*.py"))]:
        compile(path.read_text(), str(path), "exec")
