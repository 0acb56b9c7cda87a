"""Where a backbone runs: on the GPU when PyTorch sees one, else on the CPU (checked without a
GPU: what PyTorch reports is replaced, and so is the loading of the network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from labelloop.learners import backbones


@pytest.mark.parametrize("gpu", [True, False])
def test_the_device_follows_what_torch_sees(monkeypatch: pytest.MonkeyPatch, gpu: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert backbones.torch_device() == ("cuda" if gpu else "cpu")


class Network:
    """Stands for a loaded TorchScript network: records where it was sent."""

    def __init__(self) -> None:
        self.sent_to: list[str] = []

    def eval(self) -> Network:
        return self

    def parameters(self) -> list[Any]:
        return []

    def to(self, device: str) -> Network:
        self.sent_to.append(device)
        return self


@pytest.mark.parametrize("gpu", [True, False])
def test_a_backbone_is_loaded_onto_the_gpu_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: bool
) -> None:
    net = Network()
    loaded_to: list[str] = []

    def load(path: str, map_location: str) -> Network:
        loaded_to.append(map_location)
        return net

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.jit, "load", load)
    monkeypatch.setattr(backbones, "_MODULES", {})
    weights = tmp_path / "net.pt"
    weights.write_bytes(b"weights")
    spec = backbones.resolve(
        backbones.BackboneSpec(kind="torchscript", path=str(weights), input_size=32)
    )
    loaded = backbones.Backbone(spec, threads=None)
    want = "cuda" if gpu else "cpu"
    assert loaded.device == want and loaded_to == [want] and net.sent_to == [want]
