"""What the SDK uploads from a model directory (``local_files``) and where a download may write
(``transfer.materialize``): symlinks never carry either outside the directory unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pylon.resources.models import SymlinkError, local_files
from pylon.transfer import TransferError, materialize


def test_a_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    secret = tmp_path / "hostname"
    secret.write_text("not the model's")
    os.symlink(secret, model / "weights.bin")
    with pytest.raises(SymlinkError, match="follow_symlinks=True"):
        local_files(str(model))
    os.remove(model / "weights.bin")
    os.symlink(tmp_path, model / "escape")  # a linked directory out of it too
    with pytest.raises(SymlinkError):
        local_files(str(model))


def test_links_inside_the_directory_are_fine(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "a.bin").write_bytes(b"a")
    os.symlink("sub/a.bin", model / "alias.bin")
    os.symlink("sub", model / "subdir-link")  # not descended into: its files are listed once
    assert sorted(local_files(str(model))) == ["alias.bin", "sub/a.bin"]


def test_a_hugging_face_snapshot_uploads_with_follow_symlinks(tmp_path: Path) -> None:
    """HF cache layout: snapshots/<rev>/<file> are symlinks to ../../blobs/<hash>."""
    cache = tmp_path / "models--org--tiny"
    blobs, snap = cache / "blobs", cache / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for name, data in (("config.json", b"{}"), ("model.safetensors", b"weights")):
        (blobs / name.upper()).write_bytes(data)
        os.symlink(f"../../blobs/{name.upper()}", snap / name)
    os.symlink(str(snap), snap / "loop")  # a cycle ends
    with pytest.raises(SymlinkError):
        local_files(str(snap))
    files = local_files(str(snap), follow_symlinks=True)
    assert sorted(files) == ["config.json", "model.safetensors"]
    assert open(files["model.safetensors"], "rb").read() == b"weights"


def test_materialize_never_writes_through_a_link_out_of_dest(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"data")
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "sub")
    with pytest.raises(TransferError):
        materialize([("sub/f.bin", str(blob))], str(dest))
    assert not (outside / "f.bin").exists()
    for rel in ("../x", "/abs", "a\x00b", ""):
        with pytest.raises(TransferError):
            materialize([(rel, str(blob))], str(dest))
    os.symlink(outside / "target", dest / "f.bin")  # an existing link at the target is replaced, not followed
    materialize([("f.bin", str(blob))], str(dest))
    assert not (outside / "target").exists() and (dest / "f.bin").read_bytes() == b"data"


def test_the_cli_refuses_a_link_out_of_a_model_directory_and_names_the_flag(tmp_path: Path) -> None:
    """`pylon models register` exits 2 with the reason and the flag, before it reaches any server."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the registry")
    os.symlink(secret, model / "weights.bin")
    for verb in (["register", "m", str(model)], ["import", "m", str(model)]):
        done = subprocess.run([sys.executable, "-c", "from pylon.cli import main; main()", "--address", "127.0.0.1:9",
                               "--token", "pyl_x_y", "models", *verb], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "outside" in done.stderr and "--follow-symlinks" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_directory_of_config_json_and_safetensors_is_registered_as_hugging_face(tmp_path: Path) -> None:
    from pylon.resources.models import detect_format

    (tmp_path / "model.safetensors").write_bytes(b"x")
    for model_type in ("llama", "qwen2", "my-own-arch"):  # whatever the config says
        (tmp_path / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
        assert detect_format(local_files(str(tmp_path))) == "hf_transformers"
    (tmp_path / "config.json").unlink()
    assert detect_format(local_files(str(tmp_path))) == "safetensors"


def test_a_format_the_protos_do_not_name_is_refused_before_any_upload(tmp_path: Path) -> None:
    from pylon.resources.models import format_label

    assert format_label("hf_transformers") == format_label("HF_TRANSFORMERS") == "MODEL_FORMAT_HF_TRANSFORMERS"
    with pytest.raises(ValueError, match="unknown model format 'pylon_gpt': one of hf_transformers, .*other"):
        format_label("pylon_gpt")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    done = subprocess.run([sys.executable, "-c", "from pylon.cli import main; main()", "--address", "127.0.0.1:9",
                           "--token", "pyl_x_y", "models", "register", "m", str(tmp_path), "--format", "pylon_gpt"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr  # a usage error: no connection was tried
    assert "unknown model format 'pylon_gpt'" in done.stderr and "Traceback" not in done.stderr
