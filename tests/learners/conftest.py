"""A tiny TorchScript image backbone, built and saved by the tests themselves (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


def build_tiny(folder: Path) -> tuple[Path, Path]:
    """The same small network saved as TorchScript and as ONNX."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    folder.mkdir(parents=True, exist_ok=True)
    ts = folder / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(ts))
    onnx_path = folder / "tiny.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 32, 32),),
        str(onnx_path),
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
        dynamo=False,
    )
    return ts, onnx_path


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> None:
    """The test machine is shared: one PyTorch thread is several times faster than two waiting."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="session")
def tiny_backbone_params(tiny_backbone_files: tuple[Path, Path]) -> dict[str, object]:
    return {"kind": "torchscript", "path": str(tiny_backbone_files[0]), "input_size": 32}
