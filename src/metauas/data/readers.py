"""Readers for the benchmark layouts MetaUAS is evaluated on.

All readers only list files (no image decoding) and fail early, naming the offending file,
when the layout is not what the format promises.

* MVTec AD (Bergmann et al., CVPR 2019): ``<cat>/train/good``, ``<cat>/test/<defect>``,
  ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
* GoodsAD (Zhang et al., 2023): the MVTec layout with ``.jpg`` images and masks named
  ``ground_truth/<defect>/<stem>.png``.
* VisA (Zou et al., ECCV 2022): ``split_csv/1cls.csv`` with columns
  ``object,split,label,image,mask`` (paths relative to the root; masks hold class ids, any
  nonzero pixel is anomalous).
* Generic folders: ``[<cat>/]train|prompts`` (normal prompt pool), ``good`` (normal test),
  ``anomaly|anomalous|bad|defect`` (anomalous test), optional ``masks``.
* Official MetaUAS meta files: ``test.json`` (JSON lines with filename/label/maskname/clsname),
  ``oneprompt_seedN.json`` and ``test-train-top10pair-eb4.json``; image paths relative to the
  image root.  An anomalous entry without ``maskname`` is anomalous over the whole image, as in
  the official loader.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from metauas.constants import IMAGE_SUFFIXES as SUFFIXES
from metauas.data.samples import BenchmarkData, CategoryData, Sample
from metauas.errors import InputError

__all__ = [
    "DATASET_KINDS",
    "open_dataset",
    "read_mvtec",
    "read_goods",
    "read_visa",
    "read_folder",
    "read_metauas_json",
]

IMAGE_SUFFIXES = SUFFIXES  # the shared list (metauas.constants)
DATASET_KINDS = ("mvtec", "visa", "goods", "folder", "metauas-json")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_dir():
        raise InputError(f"{what} is not a directory: {path}")
    return path


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".PNG"):
            p = gt_dir / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def _mvtec_like(root: Path, name: str, categories: list[str] | None) -> BenchmarkData:
    root = _require_dir(Path(root).expanduser(), f"{name} root")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "test").is_dir())
    if not found:
        raise InputError(
            f"no {name} categories in {root}: expected <category>/train/good, <category>/test/<defect> "
            "and <category>/ground_truth/<defect>/"
        )
    wanted = categories or found
    cats: dict[str, CategoryData] = {}
    for cat in wanted:
        cdir = root / cat
        if not (cdir / "test").is_dir():
            raise InputError(f"unknown {name} category {cat!r} in {root}; available: {', '.join(found)}")
        train = _images(cdir / "train" / "good")
        if not train:
            raise InputError(f"{cdir / 'train' / 'good'}: no normal training images (needed as prompts)")
        test: list[Sample] = []
        for ddir in sorted(p for p in (cdir / "test").iterdir() if p.is_dir()):
            defect = ddir.name
            for img in _images(ddir):
                key = f"{cat}/test/{defect}/{img.name}"
                if defect == "good":
                    test.append(Sample(img, 0, None, "good", key=key))
                    continue
                mask = _find_mask(cdir / "ground_truth" / defect, img.stem)
                if mask is None:
                    raise InputError(
                        f"{img}: anomalous image has no ground-truth mask "
                        f"(looked for {cdir / 'ground_truth' / defect / (img.stem + '_mask.png')} "
                        f"or {img.stem}.png)"
                    )
                test.append(Sample(img, 1, mask, defect, key=key))
        if not test:
            raise InputError(f"{cdir / 'test'}: no test images")
        cats[cat] = CategoryData(cat, train, test)
    return BenchmarkData(name, root, cats)


def read_mvtec(root: str | Path, categories: list[str] | None = None) -> BenchmarkData:
    """MVTec AD layout (see module docstring)."""
    return _mvtec_like(Path(root), "mvtec", categories)


def read_goods(root: str | Path, categories: list[str] | None = None) -> BenchmarkData:
    """GoodsAD: MVTec layout, masks named <stem>.png (both names are accepted)."""
    return _mvtec_like(Path(root), "goods", categories)


def read_visa(root: str | Path, categories: list[str] | None = None,
              split_csv: str = "split_csv/1cls.csv") -> BenchmarkData:
    """VisA from its ``split_csv/1cls.csv`` (one-class split).

    Raises:
        InputError: the split file is missing, empty or malformed; a listed image or mask is
            missing; a training image is anomalous or an anomalous one has no mask; a requested
            category is absent or has no training or test images.
    """
    root = _require_dir(Path(root).expanduser(), "VisA root")
    csv_path = root / split_csv
    if not csv_path.is_file():
        raise InputError(f"VisA split file not found: {csv_path} (expected the official split_csv/1cls.csv)")
    cats: dict[str, CategoryData] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"object", "split", "label", "image"}
        if reader.fieldnames is None or not need.issubset({f.strip() for f in reader.fieldnames}):
            raise InputError(f"{csv_path}: header must contain object,split,label,image[,mask]; "
                             f"got {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            obj, split, label, image = row.get("object"), row.get("split"), row.get("label"), row.get("image")
            if not obj or not image or split not in ("train", "test") or label not in ("normal", "anomaly"):
                raise InputError(f"{csv_path}:{lineno}: malformed row {row}")
            if categories and obj not in categories:
                continue
            cat = cats.setdefault(obj, CategoryData(obj, [], []))
            img = root / image
            if not img.is_file():
                raise InputError(f"{csv_path}:{lineno}: image not found: {img}")
            if split == "train":
                if label != "normal":
                    raise InputError(f"{csv_path}:{lineno}: training images must be normal")
                cat.train.append(img)
                continue
            if label == "normal":
                cat.test.append(Sample(img, 0, None, "good", key=image))
            else:
                mask_rel = row.get("mask", "")
                if not mask_rel:
                    raise InputError(f"{csv_path}:{lineno}: anomalous image {image} has no mask")
                mask = root / mask_rel
                if not mask.is_file():
                    raise InputError(f"{csv_path}:{lineno}: mask not found: {mask}")
                cat.test.append(Sample(img, 1, mask, "anomaly", key=image))
    if categories:
        missing = [c for c in categories if c not in cats]
        if missing:
            raise InputError(f"categories not in {csv_path}: {', '.join(missing)}")
    if not cats:
        raise InputError(f"{csv_path}: no rows")
    for c in cats.values():
        if not c.train:
            raise InputError(f"{csv_path}: category {c.name} has no training (prompt) images")
        if not c.test:
            raise InputError(f"{csv_path}: category {c.name} has no test images")
    return BenchmarkData("visa", root, dict(sorted(cats.items())))


_ANOMALY_DIRS = ("anomaly", "anomalous", "bad", "defect", "defective")
_PROMPT_DIRS = ("train", "prompts")


def _folder_category(cdir: Path, name: str) -> CategoryData:
    prompt_dir = next((cdir / d for d in _PROMPT_DIRS if (cdir / d).is_dir()), None)
    if prompt_dir is None:
        raise InputError(f"{cdir}: no train/ (or prompts/) folder with normal prompt images")
    train = _images(prompt_dir)
    if not train:
        raise InputError(f"{prompt_dir}: no images")
    good = _images(cdir / "good")
    bad_dir = next((cdir / d for d in _ANOMALY_DIRS if (cdir / d).is_dir()), None)
    bad = _images(bad_dir) if bad_dir else []
    mask_dir = cdir / "masks"
    test = [Sample(p, 0, None, "good", key=f"{name}/good/{p.name}") for p in good]
    for p in bad:
        mask = _find_mask(mask_dir, p.stem) if mask_dir.is_dir() else None
        # masks/ present: a missing mask means the whole image is anomalous (documented rule);
        # masks/ absent: image-level ground truth only.
        test.append(Sample(p, 1, mask, bad_dir.name, whole_image=mask_dir.is_dir() and mask is None,
                           key=f"{name}/{bad_dir.name}/{p.name}"))
    if not test:
        raise InputError(f"{cdir}: no test images in good/ or {'/'.join(_ANOMALY_DIRS)}/")
    return CategoryData(name, train, test)


def read_folder(root: str | Path, categories: list[str] | None = None) -> BenchmarkData:
    """Generic folders: one category in ``root`` itself or one per sub-folder.

    Raises:
        InputError: no category folders under `root`.
    """
    root = _require_dir(Path(root).expanduser(), "dataset root")
    if any((root / d).is_dir() for d in _PROMPT_DIRS + ("good",) + _ANOMALY_DIRS):
        cats = {root.name: _folder_category(root, root.name)}
    else:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        cats = {p.name: _folder_category(p, p.name) for p in subs if not categories or p.name in categories}
        if not cats:
            raise InputError(
                f"{root}: no categories; expected [<category>/]train/ (normal prompts), good/, anomaly/ "
                "and optional masks/"
            )
    data = BenchmarkData("folder", root, cats)
    return data.select(categories) if categories else data


def _read_json_lines(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object per line")
            out.append(obj)
    return out


def _read_fixed_prompts(meta: Path, root: Path) -> dict[int, dict[str, Path]]:
    """The official one-prompt files ``oneprompt_seed<N>.json``: {seed: {category: prompt path}}."""
    fixed: dict[int, dict[str, Path]] = {}
    for p in sorted(meta.glob("oneprompt_seed*.json")):
        seed_match = re.fullmatch(r"oneprompt_seed(\d+)\.json", p.name)
        if not seed_match:
            continue
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{p}: expected an object {{clsname: {{filename: ...}}}}")
        per_cat: dict[str, Path] = {}
        for cls, entry in obj.items():
            fn = entry.get("filename") if isinstance(entry, dict) else entry if isinstance(entry, str) else None
            if not fn:
                raise InputError(f"{p}: entry {cls!r} has no filename")
            per_cat[cls] = root / fn
        fixed[int(seed_match.group(1))] = per_cat

    return fixed


def _read_ranked_prompts(meta: Path, root: Path) -> dict[str, list[Path]]:
    """The official ranking file ``test-train-top10pair-eb4.json``: {test file: [train files]}."""
    ranked: dict[str, list[Path]] = {}
    top = meta / "test-train-top10pair-eb4.json"
    if top.is_file():
        for lineno, m in enumerate(_read_json_lines(top), start=1):
            for key, files in m.items():
                if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                    raise InputError(f"{top}:{lineno}: expected {{test_file: [train files]}}")
                ranked[key] = [root / f for f in files]
    return ranked


def read_metauas_json(root: str | Path, categories: list[str] | None = None,
                      meta_dir: str | Path | None = None) -> BenchmarkData:
    """Official MetaUAS meta files (``test.json`` etc. in ``meta_dir``, images under ``root``).

    Raises:
        InputError: test.json missing or empty, an entry malformed or naming a missing image or
            mask, a requested category absent, or a category without prompt images.
    """
    root = _require_dir(Path(root).expanduser(), "image root")
    meta = _require_dir(Path(meta_dir).expanduser(), "meta folder") if meta_dir else root
    test_json = meta / "test.json"
    if not test_json.is_file():
        raise InputError(f"{test_json} not found (official MetaUAS meta file with one JSON object per line)")
    cats: dict[str, CategoryData] = {}
    for lineno, m in enumerate(_read_json_lines(test_json), start=1):
        try:
            filename, label, cls = m["filename"], int(m["label"]), m["clsname"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{test_json}: entry {lineno} needs filename, label (0/1) and clsname: {m}") from None
        if label not in (0, 1):
            raise InputError(f"{test_json}: entry {lineno}: label must be 0 or 1, got {label}")
        if categories and cls not in categories:
            continue
        img = root / filename
        if not img.is_file():
            raise InputError(f"{test_json}: entry {lineno}: image not found: {img}")
        maskname = m.get("maskname") or ""
        mask = root / maskname if maskname else None
        if mask is not None and not mask.is_file():
            raise InputError(f"{test_json}: entry {lineno}: mask not found: {mask}")
        defect = m.get("specie_name") or ("good" if label == 0 else Path(filename).parent.name)
        cat = cats.setdefault(cls, CategoryData(cls, [], []))
        cat.test.append(Sample(img, label, mask, defect, whole_image=(label == 1 and mask is None), key=filename))
    if categories:
        missing = [c for c in categories if c not in cats]
        if missing:
            raise InputError(f"categories not in {test_json}: {', '.join(missing)}")
    if not cats:
        raise InputError(f"{test_json}: no entries")

    # Prompt pool: train.json if shipped, else <cls>/train/good/ under the image root.
    train_json = meta / "train.json"
    if train_json.is_file():
        for lineno, m in enumerate(_read_json_lines(train_json), start=1):
            if "filename" not in m or "clsname" not in m:
                raise InputError(f"{train_json}: entry {lineno} needs filename and clsname")
            if m["clsname"] in cats and int(m.get("label", 0)) == 0:
                cats[m["clsname"]].train.append(root / m["filename"])
    for c in cats.values():
        if not c.train:
            c.train = _images(root / c.name / "train" / "good")

    fixed = _read_fixed_prompts(meta, root)
    ranked = _read_ranked_prompts(meta, root)
    for c in cats.values():
        if not c.train and not any(c.name in v for v in fixed.values()):
            raise InputError(f"category {c.name}: no prompt images (no train.json entries, no "
                             f"{root / c.name / 'train' / 'good'}, no oneprompt_seedN.json entry)")
        if not c.train:  # only fixed prompts are known: they form the pool
            c.train = sorted({v[c.name] for v in fixed.values() if c.name in v})
    return BenchmarkData("metauas-json", root, dict(sorted(cats.items())), fixed, ranked)


def open_dataset(kind: str, root: str | Path, categories: list[str] | None = None,
                 meta_dir: str | Path | None = None) -> BenchmarkData:
    """Dispatch on ``kind`` (one of DATASET_KINDS).

    Raises:
        InputError: an unknown dataset kind (and the reader's own errors).
    """
    if kind == "mvtec":
        return read_mvtec(root, categories)
    if kind == "goods":
        return read_goods(root, categories)
    if kind == "visa":
        return read_visa(root, categories)
    if kind == "folder":
        return read_folder(root, categories)
    if kind == "metauas-json":
        return read_metauas_json(root, categories, meta_dir)
    raise InputError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
