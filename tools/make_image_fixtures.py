#!/usr/bin/env python3
"""Writes the image fixtures and the Pillow/torchvision reference outputs for tests/image_decode.rs and tests/image_resize.rs.

Run with the project's venv (Pillow + torchvision): `python tools/make_image_fixtures.py`.
Everything it writes is deterministic, so rerunning it on the same versions changes nothing.

Outputs, all under tests/fixtures/images/:
  *.png, *.jpg            inputs (small, made here from a seeded synthetic picture)
  expected/NAME.rgb       what Pillow decodes NAME to: ImageOps.exif_transpose(im).convert("RGB"), raw HWC bytes
  decode.txt              `NAME WIDTH HEIGHT` per input with an expected .rgb
  ops.txt                 resize/crop/flip cases: `SOURCE OP ARGS... = OUT_W OUT_H FNV1A64`, the hash of the
                          Pillow/torchvision output bytes. SOURCE is `synth:WxH` (the integer-only picture that
                          tests/common rebuilds bit for bit, so big cases cost no disk) or `file:NAME.png`.
  bad/*                   broken files the decoder must reject with a one-line error
  versions.txt            the library versions that produced the references
"""

import warnings
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
import PIL.features
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import transforms

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"
EXPECTED = OUT / "expected"
BAD = OUT / "bad"


# --- the synthetic picture, mirrored in tests/common/mod.rs::synth ----------------------------------------------


def synth(w: int, h: int) -> np.ndarray:
    """Ramps per channel, a hard-edged checkerboard and hashed noise: smooth areas, edges and high frequencies,
    so every resize coefficient matters. Integer-only so Rust rebuilds it exactly."""
    y, x, c = np.meshgrid(np.arange(h, dtype=np.int64), np.arange(w, dtype=np.int64), np.arange(3), indexing="ij")
    m = 0xFFFFFFFF
    k = ((x * 73856093) & m) ^ ((y * 19349663) & m) ^ ((c * 83492791) & m)
    k = ((k ^ (k >> 13)) * 0x5BD1E995) & m
    k ^= k >> 15
    noise = (k & 63) - 32
    ramp = np.where(
        c == 0, x * 255 // max(w - 1, 1), np.where(c == 1, y * 255 // max(h - 1, 1), (x + y) * 255 // max(w + h - 2, 1))
    )
    block = np.where(((x // 7) + (y // 5)) % 2 == 0, 60, -60)
    return np.clip(ramp + block + noise, 0, 255).astype(np.uint8)


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def rgb_bytes(im: Image.Image) -> bytes:
    assert im.mode == "RGB", im.mode
    return np.asarray(im, dtype=np.uint8).tobytes()


# --- inputs --------------------------------------------------------------------------------------------------------


def png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG by hand: Pillow cannot write 16-bit RGB/RGBA/LA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def save(im: Image.Image, name: str, **kw) -> Path:
    path = OUT / name
    im.save(path, **kw)
    return path


def make_inputs() -> list[str]:
    """Writes the decode fixtures; returns their names."""
    names = []
    small = synth(31, 23)
    rgb = Image.fromarray(small)
    alpha = Image.fromarray((np.arange(31 * 23, dtype=np.uint32).reshape(23, 31) * 7 % 256).astype(np.uint8))

    save(rgb, "rgb.png")
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    save(rgba, "rgba.png")
    save(rgb.convert("L"), "l.png")
    la = rgb.convert("L")
    la.putalpha(alpha)
    save(la, "la.png")
    save(rgb.convert("1"), "bilevel.png")
    pal = rgb.quantize(colors=40, dither=Image.Dither.NONE)
    save(pal, "p.png")
    save(pal, "p_trns.png", transparency=bytes(range(0, 240, 6)))
    save(Image.fromarray(small[:1, :1]), "one.png")
    names += ["rgb.png", "rgba.png", "l.png", "la.png", "bilevel.png", "p.png", "p_trns.png", "one.png"]

    # 16-bit: low bytes differ from high bytes so any rounding choice shows up.
    wide = small.astype(np.uint16) * 257 + (np.arange(small.size, dtype=np.uint16).reshape(small.shape) * 37 % 257)
    (OUT / "rgb16.png").write_bytes(png16(wide, 2))
    rgba16 = np.concatenate([wide, wide[..., :1]], axis=2)
    (OUT / "rgba16.png").write_bytes(png16(rgba16, 6))
    (OUT / "la16.png").write_bytes(png16(np.stack([wide[..., 0], wide[..., 1]], axis=2), 4))
    (OUT / "l16.png").write_bytes(png16(wide[..., 0], 0))
    names += ["rgb16.png", "rgba16.png", "la16.png", "l16.png"]

    # JPEGs: odd size so partial MCUs and chroma edges are exercised.
    photo = Image.fromarray(synth(65, 49))
    save(photo, "q90_420.jpg", quality=90, subsampling=2)
    save(photo, "q90_422.jpg", quality=90, subsampling=1)
    save(photo, "q90_444.jpg", quality=90, subsampling=0)
    save(photo, "progressive.jpg", quality=90, subsampling=2, progressive=True)
    save(photo.convert("L"), "gray.jpg", quality=90)
    save(photo.convert("CMYK"), "cmyk.jpg", quality=95)
    save(photo.crop((0, 0, 1, 1)), "one.jpg", quality=90)
    names += ["q90_420.jpg", "q90_422.jpg", "q90_444.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg", "one.jpg"]

    # EXIF orientations: a picture with no symmetry, so every wrong transform is visible.
    arrow = Image.fromarray(synth(24, 16))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        name = f"exif{orientation}.jpg"
        save(arrow, name, quality=95, subsampling=0, exif=exif.tobytes())
        names.append(name)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(arrow, "exif6.png", exif=exif.tobytes())
    names.append("exif6.png")
    return names


def pillow_decode(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def make_bad() -> None:
    good_jpg = (OUT / "q90_420.jpg").read_bytes()
    good_png = (OUT / "rgb.png").read_bytes()
    (BAD / "empty.jpg").write_bytes(b"")
    (BAD / "html.jpg").write_bytes(b"<html><body>404 not found</body></html>\n")
    (BAD / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (BAD / "no_eoi.jpg").write_bytes(good_jpg[:-2])
    (BAD / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    # A flipped byte inside the zlib stream: the CRC and the inflate both fail.
    corrupt = bytearray(good_png)
    idat = corrupt.index(b"IDAT")
    corrupt[idat + 12] ^= 0xFF
    (BAD / "corrupt.png").write_bytes(bytes(corrupt))
    # Decompression bombs: tiny files whose headers claim about 4.3 gigapixels.
    bomb_png = bytearray(good_png)
    bomb_png[16:24] = struct.pack(">II", 65535, 65535)
    bomb_png[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb_png[12:29])))
    (BAD / "bomb.png").write_bytes(bytes(bomb_png))
    bomb_jpg = bytearray(good_jpg)
    sof = bomb_jpg.index(b"\xff\xc0")
    bomb_jpg[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    (BAD / "bomb.jpg").write_bytes(bytes(bomb_jpg))
    # A JPEG whose frame header claims zero components.
    zero = bytearray(good_jpg)
    zero[sof + 9] = 0
    (BAD / "zero_components.jpg").write_bytes(bytes(zero))


# --- resize / crop references --------------------------------------------------------------------------------------


def source(spec: str) -> Image.Image:
    kind, arg = spec.split(":")
    if kind == "synth":
        w, h = map(int, arg.split("x"))
        return Image.fromarray(synth(w, h))
    return pillow_decode(OUT / arg)


def apply(im: Image.Image, op: str, args: list[int]) -> Image.Image:
    if op == "resize":  # PIL directly, as torchvision's PIL backend calls it
        return im.resize((args[0], args[1]), Image.BILINEAR)
    if op == "resize_shorter":
        return transforms.Resize(args[0])(im)  # bilinear is the default interpolation
    if op == "center_crop":  # torchvision takes (height, width)
        return transforms.CenterCrop((args[1], args[0]))(im)
    if op == "eval":  # the standard ImageNet evaluation transform
        return transforms.Compose([transforms.Resize(args[0]), transforms.CenterCrop(args[1])])(im)
    if op == "crop":
        x, y, w, h = args
        return im.crop((x, y, x + w, y + h))
    if op == "flip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    raise ValueError(op)


OPS = [
    # Pillow resize: down by ~0.3, 0.5 and 0.77, up by ~1.7, one side only, odd and degenerate sizes.
    ("synth:500x375", "resize 150 112"),
    ("synth:500x375", "resize 250 188"),
    ("synth:500x375", "resize 385 289"),
    ("synth:500x375", "resize 850 638"),
    ("synth:500x375", "resize 500 200"),
    ("synth:500x375", "resize 123 375"),
    ("synth:500x375", "resize 37 511"),
    ("synth:500x375", "resize 1 1"),
    ("synth:500x375", "resize 500 375"),
    ("synth:97x73", "resize 29 22"),
    ("synth:97x73", "resize 48 36"),
    ("synth:97x73", "resize 75 56"),
    ("synth:97x73", "resize 165 124"),
    ("synth:97x73", "resize 13 97"),
    ("synth:1x1", "resize 5 3"),
    ("synth:3x2", "resize 2 7"),
    ("synth:2000x3", "resize 7 3"),
    ("synth:4000x3000", "resize 224 224"),
    # torchvision Resize(int): the shorter side becomes int, the other int(size * long / short).
    ("synth:500x375", "resize_shorter 256"),
    ("synth:500x375", "resize_shorter 224"),
    ("synth:375x500", "resize_shorter 256"),
    ("synth:500x333", "resize_shorter 256"),
    ("synth:526x497", "resize_shorter 256"),
    ("synth:1000x999", "resize_shorter 224"),
    ("synth:256x256", "resize_shorter 256"),
    ("synth:255x256", "resize_shorter 256"),
    ("synth:100x80", "resize_shorter 300"),
    ("synth:1x1", "resize_shorter 3"),
    # CenterCrop: Python's round() halves to even, and padding when the crop is larger.
    ("synth:500x375", "center_crop 224 224"),
    ("synth:97x73", "center_crop 96 70"),
    ("synth:97x73", "center_crop 92 68"),
    ("synth:97x73", "center_crop 94 71"),
    ("synth:97x73", "center_crop 120 90"),
    ("synth:97x73", "center_crop 120 60"),
    ("synth:97x73", "center_crop 50 74"),
    ("synth:1x1", "center_crop 4 3"),
    # Resize(256) then CenterCrop(224), on both orientations and a square.
    ("synth:500x375", "eval 256 224"),
    ("synth:375x500", "eval 256 224"),
    ("synth:526x497", "eval 256 224"),
    ("synth:100x80", "eval 256 224"),
    # PIL crop: zeros outside the image.
    ("synth:97x73", "crop 10 5 40 30"),
    ("synth:97x73", "crop -5 -7 20 20"),
    ("synth:97x73", "crop 90 70 20 20"),
    ("synth:97x73", "crop -10 -10 120 100"),
    ("synth:97x73", "crop 200 200 3 3"),
    ("synth:97x73", "flip"),
    # The same on a real decoded file, to tie the decoder and the resize together.
    ("file:rgb.png", "resize 17 13"),
    ("file:rgb.png", "eval 40 32"),
]


def make_ops() -> list[str]:
    lines = []
    cache: dict[str, Image.Image] = {}
    for spec, op_line in OPS:
        op, *rest = op_line.split()
        args = [int(a) for a in rest]
        im = cache.setdefault(spec, source(spec))
        out = apply(im, op, args)
        lines.append(f"{spec} {op_line} = {out.width} {out.height} {fnv1a64(rgb_bytes(out))}")
    return lines


def main() -> None:
    # Pillow nags about palette transparency given as bytes; that is the case p_trns.png exists to test.
    warnings.filterwarnings("ignore", "Palette images with Transparency")
    for d in (OUT, EXPECTED, BAD):
        d.mkdir(parents=True, exist_ok=True)
    decode_lines = []
    for name in make_inputs():
        im = pillow_decode(OUT / name)
        note = ""
        if name == "l16.png":
            # Pillow clips 16-bit gray to 0..255 (nearly all white); imgpipe keeps the high byte, as Pillow does
            # for 16-bit RGB, RGBA and LA. Record imgpipe's choice, after checking Pillow still clips.
            with Image.open(OUT / name) as raw:
                wide = np.asarray(raw).astype(np.int64)
            assert (np.asarray(im)[..., 0] == np.clip(wide, 0, 255)).all()
            im = Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB")
            note = "  # high byte; Pillow clips to 255 instead"
        (EXPECTED / f"{name}.rgb").write_bytes(rgb_bytes(im))
        decode_lines.append(f"{name} {im.width} {im.height}{note}")
    make_bad()
    header = "# written by tools/make_image_fixtures.py; do not edit\n"
    (OUT / "decode.txt").write_text(header + "\n".join(decode_lines) + "\n")
    (OUT / "ops.txt").write_text(header + "\n".join(make_ops()) + "\n")
    (OUT / "versions.txt").write_text(
        f"python {sys.version.split()[0]}\nPillow {PIL.__version__}\ntorchvision {torchvision.__version__}\n"
        f"torch {torch.__version__}\nnumpy {np.__version__}\nlibjpeg-turbo {PIL.features.version('libjpeg_turbo')}\n"
    )
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total // 1024} KiB)")


if __name__ == "__main__":
    main()
