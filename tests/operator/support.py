"""Helpers of the operator tests: a runtime on our fake Kubernetes port, and sample objects."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from pylon_operator.handlers import Runtime
from pylon_operator.pylon_api import PylonApi
from pylon_operator.settings import OperatorSettings
from tests.operator.fake_kube import FakeKube

SAMPLES = Path(__file__).resolve().parents[2] / "operators" / "samples"


def sample(name: str) -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((SAMPLES / name).read_text()))


def memo_for(api: PylonApi, kube: FakeKube, **settings: Any) -> SimpleNamespace:
    """kopf's memo as the handlers see it: ``memo.runtime``."""
    return SimpleNamespace(runtime=Runtime(api, kube, OperatorSettings(**settings)))
