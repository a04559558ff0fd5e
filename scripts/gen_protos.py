"""Regenerate the Python code for protos/ into sdk/ (committed; CI checks it is current).

Usage: python scripts/gen_protos.py [--out DIR]   (default: sdk/)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def generate(out: pathlib.Path) -> None:
    """Run protoc (the one bundled with the pinned grpcio-tools) and add package __init__ files."""
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *proto_files()]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for f in proto_files():
        d = out / pathlib.Path(f).parent
        while d != out and d != out / "pylon":
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")
            d = d.parent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "sdk")
    generate(parser.parse_args().out)
