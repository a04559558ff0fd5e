"""Every repository path the docs name exists, so the docs stay a map of the code.

Scanned: README.md, docs/**/*.md and the comments of protos/**/*.proto. Checked: relative
markdown links; words in inline code or fenced blocks that start with a top-level folder
(``services/...``, ``docs/...``); words of inline code that start with a subpackage of
pylon_services or pylon (``scheduler/sim/``, ``common/blobs.allocate_numbered``) and ``foo.py``
or ``domain/foo.py``, which must end the path of a file in the packages, benchmarks/, tests/ or
scripts/; and modules run as ``python -m X``. ``{t}`` and ``<service>`` stand for any one path
segment, ``{a,b}`` is expanded, ``*`` globs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("services", "sdk", "docs", "tests", "benchmarks", "protos", "deploy", "operators", "examples",
       "scripts", ".ci")
# Where a bare ``foo.py`` or ``store/foo.py`` may live: the three packages, the benchmarks, tests, scripts.
PACKAGES = (ROOT / "services" / "pylon_services", ROOT / "sdk" / "pylon", ROOT / "operators" / "pylon_operator",
            ROOT / "benchmarks", ROOT / "tests", ROOT / "scripts")
# Top-level packages a ``python -m`` module may start with, and the folder each lives in.
MODULE_ROOTS = {"pylon_services": ROOT / "services", "pylon": ROOT / "sdk", "pylon_operator": ROOT / "operators",
                "tests": ROOT,
                "benchmarks": ROOT, "scripts": ROOT}

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MODULE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
PY_NAME = re.compile(r"^[\w./-]*\w\.py$")
STRIP = "\"'()[],;:.!?"


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _words(text: str) -> Iterator[str]:
    """Whitespace-separated words, with surrounding punctuation and ``path::test`` suffixes cut."""
    for raw in re.split(r"[\s=]+", text):
        word = raw.split("::")[0].strip(STRIP).rstrip(STRIP)
        if word:
            yield word


def _expand(path: str) -> list[str]:
    """Brace alternatives expanded (``{a,b}``); ``{x}`` and ``<x>`` placeholders become ``*``."""
    path = re.sub(r"<[^<>/]+>", "*", path)
    parts = re.split(r"(\{[^{}]*\})", path)
    choices = [p[1:-1].split(",") if p.startswith("{") and "," in p else ["*"] if p.startswith("{") else [p]
               for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _exists(path: str, base: Path = ROOT) -> bool:
    return all(any(base.glob(p)) if any(ch in p for ch in "*?[") else (base / p).exists() for p in _expand(path))


def _in_packages(name: str) -> bool:
    """A bare ``foo.py`` or a package-relative ``domain/foo.py``: some file's path ends with it."""
    leaf = name.rsplit("/", 1)[-1]
    return any(f"/{p.relative_to(base)}".endswith(f"/{name}") for base in PACKAGES for p in base.rglob(leaf))


def _module_exists(module: str) -> bool:
    head = module.split(".")[0]
    if head not in MODULE_ROOTS:
        return True  # a third-party module (pip, pytest): not ours to check
    base = MODULE_ROOTS[head] / module.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__main__.py").exists()  # a package runs its __main__


def _is_repo_path(word: str) -> bool:
    return word.split("/")[0] in TOP and "/" in word and "://" not in word


def _subpackage_base(word: str) -> Path | None:
    """The package a ``scheduler/sim/``-style word is relative to, if its first segment names one."""
    head, _, rest = word.partition("/")
    # A folder (``scheduler/sim/``) or a file or module (``common/blobs.x``); other words that
    # start like a package are object keys (``registry/tenants/{t}``).
    if not head or not rest or "://" in word or not (word.endswith("/") or "." in rest.rsplit("/", 1)[-1]):
        return None
    return next((base for base in PACKAGES[:2] if (base / head).is_dir() and head != "__pycache__"), None)


def _missing_link(target: str, where: Path) -> bool:
    if re.match(r"^(https?:|mailto:|#)", target):
        return False
    path = target.split("#")[0]
    return bool(path) and not _exists(path, where.parent)


def _missing_inline(word: str) -> bool:
    """A word of inline code: a package-relative path (``scheduler/sim/``, or
    ``common/blobs.allocate_numbered`` for a function of common/blobs.py) or a ``foo.py``."""
    if _is_repo_path(word) or word.startswith((".", "/")):
        return False
    if PY_NAME.match(word):
        return not _in_packages(word)
    base = _subpackage_base(word)
    return base is not None and not _exists(word, base) and not (base / (word.split(".")[0] + ".py")).exists()


def missing_in(text: str, where: Path) -> set[str]:
    """The repository paths ``text`` names that do not exist (``where``: the file, for links)."""
    fenced = FENCE.findall(text)
    prose = FENCE.sub("", text)
    code = INLINE.findall(prose)
    missing = {target for target in LINK.findall(prose) if _missing_link(target, where)}
    missing |= {w for w in itertools.chain.from_iterable(map(_words, code + fenced))
                if _is_repo_path(w) and not _exists(w)}
    missing |= {w for w in itertools.chain.from_iterable(map(_words, code)) if _missing_inline(w)}
    missing |= {f"python -m {m}" for m in MODULE.findall("\n".join(code + fenced)) if not _module_exists(m)}
    return missing


def test_every_path_the_docs_name_exists() -> None:
    found = {str(doc.relative_to(ROOT)): sorted(missing_in(doc.read_text(), doc)) for doc in _docs()}
    bad = {doc: paths for doc, paths in found.items() if paths}
    assert not bad, "paths named in the docs that do not exist:\n" + "\n".join(
        f"  {doc}: {', '.join(paths)}" for doc, paths in sorted(bad.items()))


def test_every_path_proto_comments_name_exists() -> None:
    bad = {}
    for proto in sorted((ROOT / "protos").rglob("*.proto")):
        comments = "\n".join(line.split("//", 1)[1] for line in proto.read_text().splitlines() if "//" in line)
        words = [w for w in _words(comments) if _is_repo_path(w) and not _exists(w)]
        if words:
            bad[str(proto.relative_to(ROOT))] = words
    assert not bad, f"paths named in proto comments that do not exist: {bad}"


def test_the_checker_catches_a_missing_path_and_accepts_placeholders() -> None:
    """The scanner itself: what it must flag, and the forms it must accept."""
    doc = ROOT / "docs" / "x.md"
    text = ("See `sdk/pylon/resources.py` and `cli.py`, [gone](nowhere.md), `python -m pylon_services.nope`, "
            "`scheduler/nope/`, `python -m pylon_services.scheduler.domain`.\n"
            "Fine: `services/pylon_services/<service>/api/`, `docs/img/sched_msr_{fair-share,gavel}.png`, "
            "`scheduler/domain/job.py`, [ops](operations.md#settings), `tenants/{t}/jobs/`, `index.json`, "
            "`common/blobs.allocate_numbered`, `scheduler/sim/`, `/tmp/x`, `registry/tenants/{t}`,\n"
            "```\n.venv/bin/python benchmarks/sim_scale.py --sizes 10\npython -m pylon_services.scheduler.sim\n```\n")
    assert missing_in(text, doc) == {"sdk/pylon/resources.py", "cli.py", "nowhere.md",
                                     "python -m pylon_services.nope", "scheduler/nope/",
                                     "python -m pylon_services.scheduler.domain"}
    assert missing_in("```\npython benchmarks/gone.py\n```\n", doc) == {"benchmarks/gone.py"}
