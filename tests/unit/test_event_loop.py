"""Every service process runs on the loop ``runtime/loop.py`` picks."""

from __future__ import annotations

import asyncio

import pytest

from pylon_services.runtime import loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert loop.loop_kind("auto") == "uvloop"
    assert loop.run(_loop_module(), "auto").startswith("uvloop")


def test_asyncio_choice_forces_the_stdlib_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_EVENT_LOOP", "asyncio")
    assert loop.loop_kind() == "asyncio"
    assert loop.run(_loop_module()).startswith("asyncio")


def test_an_unknown_choice_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="auto, uvloop, asyncio"):
        loop.loop_kind()


def test_uvloop_required_but_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_uvloop(name: str, *args: object, **kwargs: object) -> object:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert loop.loop_kind("auto") == "asyncio"
    with pytest.raises(RuntimeError, match="pip install uvloop"):
        loop.loop_kind("uvloop")
