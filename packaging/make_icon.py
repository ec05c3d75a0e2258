"""Draw the TransferStudio app icon with PIL (no design files to keep in sync).

    python packaging/make_icon.py          # writes resources/icons/transferstudio.{png,ico,icns}

The picture says what the app does: a landscape (hills under a dawn sky) on the left
turns into a city skyline at night on the right. Deterministic, so re-running it gives
the same files.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

MASTER = 1024  # drawn 4x larger and downsampled: cheap antialiasing for PIL's aliased shapes
SS = 4
ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]


def _lerp(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def draw(size: int = MASTER) -> Image.Image:
    big = size * SS
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    art = Image.new("RGBA", (big, big))
    d = ImageDraw.Draw(art)
    # Sky: dawn on the left fading into night on the right, lighter towards the horizon.
    dawn_top, dawn_low = (70, 96, 170), (250, 176, 120)
    night_top, night_low = (14, 18, 48), (60, 52, 110)
    columns = 64
    for c in range(columns):
        t = c / (columns - 1)
        top, low = _lerp(dawn_top, night_top, t), _lerp(dawn_low, night_low, t)
        x0, x1 = big * c // columns, big * (c + 1) // columns
        for r in range(32):
            y0, y1 = big * r // 32, big * (r + 1) // 32
            d.rectangle([x0, y0, x1, y1], fill=_lerp(top, low, r / 31))
    # Sun (left) and moon (right).
    u = big / 100
    d.ellipse([14 * u, 22 * u, 32 * u, 40 * u], fill=(255, 226, 150))
    d.ellipse([72 * u, 14 * u, 84 * u, 26 * u], fill=(236, 238, 250))
    d.ellipse([75 * u, 12 * u, 87 * u, 24 * u], fill=_lerp(night_top, night_low, 0.2))
    # Hills on the left half.
    d.polygon([(0, 62 * u), (18 * u, 48 * u), (34 * u, 58 * u), (50 * u, 50 * u), (58 * u, 60 * u),
               (58 * u, big), (0, big)], fill=(52, 104, 82))
    d.polygon([(0, 74 * u), (26 * u, 64 * u), (52 * u, 72 * u), (52 * u, big), (0, big)], fill=(34, 78, 64))
    # Skyline on the right half, with lit windows.
    towers = [(50, 58, 60), (57, 66, 44), (65, 73, 52), (72, 82, 36), (81, 89, 50), (88, 100, 42)]
    for x0, x1, top in towers:
        d.rectangle([x0 * u, top * u, x1 * u, big], fill=(28, 30, 52))
        for wy in range(top + 4, 96, 6):
            for wx in range(x0 + 2, x1 - 1, 3):
                if (wx * 7 + wy * 3) % 5 < 3:
                    d.rectangle([wx * u, wy * u, (wx + 1.2) * u, (wy + 2) * u], fill=(255, 214, 120))
    # A rounded-square mask, like other desktop app icons.
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).rounded_rectangle([3 * u, 3 * u, 97 * u, 97 * u], radius=20 * u, fill=255)
    img.paste(art, (0, 0), mask)
    # Soft outline so the icon reads on light and dark panels.
    edge = mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(9))
    img.paste((255, 255, 255, 90), (0, 0), edge)
    return img.resize((size, size), Image.LANCZOS)


def main(out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir) if out_dir else Path(__file__).resolve().parents[1] / "resources" / "icons"
    out_dir.mkdir(parents=True, exist_ok=True)
    master = draw()
    master.resize((256, 256), Image.LANCZOS).save(out_dir / "transferstudio.png", optimize=True)
    master.save(out_dir / "transferstudio.ico", sizes=ICO_SIZES)  # Windows exe + installer
    master.save(out_dir / "transferstudio.icns")  # macOS .app bundle
    return out_dir


if __name__ == "__main__":
    print(f"wrote icons to {main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)}")
