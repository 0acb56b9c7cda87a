"""Copy the browser tests' screenshots into docs/img as small PNGs (``make screenshots``)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ("dashboard", "label-no-model", "label-prelabel", "label-back", "new-task")


def main(width: int = 900) -> None:
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    for name in SHOTS:
        src = ROOT / "test-artifacts" / f"{name}.png"
        if not src.exists():
            sys.exit(f"{src} is missing: run the browser tests first")
        with Image.open(src) as img:
            img = img.convert("RGB")
            if img.width > width:
                img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
            img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
                out / f"{name}.png", optimize=True
            )
        print(f"{out / name}.png: {(out / f'{name}.png').stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
