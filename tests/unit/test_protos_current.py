"""The committed generated code must be exactly what protoc (pinned grpcio-tools) produces."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / "sdk" / p, shallow=False)]
    assert not stale, f"regenerate with `python scripts/gen_protos.py`: {stale}"
    committed = sorted(p.relative_to(ROOT / "sdk") for p in (ROOT / "sdk" / "pylon").rglob("*_pb2*.py*"))
    assert committed == [p for p in generated if "_pb2" in p.name], "stale generated files are committed"


def test_every_rpc_documents_its_errors():
    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("rpc "):
                comment = " ".join(lines[max(0, i - 6):i])
                assert "Errors:" in comment, f"{proto.name}: {line.strip()} has no 'Errors:' comment"
