#!/usr/bin/env python3
"""Emoji artwork (Twitter Twemoji + Google Noto, from npm's emoji-datasource packages) as an image folder per split.

    python scripts/prepare_emoji.py --cache /work/data/emoji --out /work/data/emoji/folder

1. ``npm pack emoji-datasource-{twitter,google}@16.0.0`` into ``--cache`` unless the tarballs are already there,
   and unpack ``package/emoji.json`` and ``package/img/<vendor>/64/*.png`` (the data is never a runtime
   dependency of the package and never downloaded by tests).
2. Every 64x64 RGBA file is composited on white and written as RGB PNG to ``<out>/<split>/<vendor>-<image>``.
3. ``<out>/labels.csv``: one row per file: file (relative to ``--out``), split, vendor, unified, base (the emoji's
   own unified code), short_name, category, subcategory, skin (the skin-tone code, empty for the default).
4. For ``imagegpt probe``: ``<out>/probe/<split>/`` (hard links to the same files, the Component category left
   out: skin-tone swatches and hair parts are no category of pictures) and ``<out>/probe/<split>_labels.npy``, the
   category ids (:data:`CATEGORIES` order) in the order ``imagegpt`` lists the folder (sorted file names), and
   ``<split>_groups.npy``, one id per emoji in the same order, for ``imagegpt probe --groups`` (its validation
   split then holds out whole emoji too).

The split is by emoji, never by file: an emoji entry of emoji.json (its default image, every skin-tone variant,
both vendors) goes wholly to one split, chosen by the first 8 hex digits of sha256(base unified code) mod 100:
0-79 train, 80-89 val, 90-99 test. The rule depends on nothing else, so it is fixed across runs and versions.
Licences: Twitter's images CC-BY 4.0 (Copyright 2020 Twitter, Inc and other contributors), Google's Noto emoji
Apache 2.0; see each package's README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

from PIL import Image

VERSION = "16.0.0"
VENDORS = ("twitter", "google")
SPLITS = ("train", "val", "test")
# emoji.json's categories in its own order, Component (skin-tone swatches, hair styles) left out of the probe
CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
              "Activities", "Objects", "Symbols", "Flags")
FIELDS = ("file", "split", "vendor", "unified", "base", "short_name", "category", "subcategory", "skin")


def split_of(base_unified: str) -> str:
    """train / val / test for an emoji, from its base unified code alone (see the module docstring)."""
    bucket = int(hashlib.sha256(base_unified.upper().encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def fetch(cache: Path, vendor: str) -> Path:
    """The unpacked package directory of ``vendor`` under ``cache``; npm pack + unpack when missing."""
    root = cache / vendor / "package"
    if (root / "emoji.json").is_file() and (root / "img" / vendor / "64").is_dir():
        return root
    tgz = cache / f"emoji-datasource-{vendor}-{VERSION}.tgz"
    if not tgz.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", "--silent", f"emoji-datasource-{vendor}@{VERSION}"], cwd=cache, check=True)
    with tarfile.open(tgz) as tar:
        keep = [m for m in tar.getmembers() if m.isfile() and (
            m.name in ("package/emoji.json", "package/README.md", "package/LICENSE")
            or m.name.startswith(f"package/img/{vendor}/64/"))]  # fmt: skip
        tar.extractall(cache / vendor, members=keep, filter="data")
    return root


def entries(emoji_json: list[dict]) -> list[dict]:
    """One record per image of emoji.json: the emoji itself and each of its skin variations."""
    out = []
    for e in emoji_json:
        base = dict(base=e["unified"], short_name=e["short_name"], category=e["category"],
                    subcategory=e["subcategory"])  # fmt: skip
        out.append(dict(base, unified=e["unified"], image=e["image"], skin=""))
        for skin, v in (e.get("skin_variations") or {}).items():
            out.append(dict(base, unified=v["unified"], image=v["image"], skin=skin))
    return out


def composite_on_white(path: Path) -> Image.Image:
    rgba = Image.open(path).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def prepare(packages: dict[str, Path], out: Path) -> list[dict]:
    """Write ``out/<split>/*.png`` and ``out/labels.csv`` from unpacked packages ``{vendor: package_dir}``."""
    rows = []
    for vendor, root in packages.items():
        for rec in entries(json.loads((root / "emoji.json").read_text(encoding="utf-8"))):
            src = root / "img" / vendor / "64" / rec["image"]
            if not src.is_file():  # an emoji this vendor does not draw
                continue
            split = split_of(rec["base"])
            name = f"{split}/{vendor}-{rec['image']}"
            (out / split).mkdir(parents=True, exist_ok=True)
            composite_on_white(src).save(out / name)
            rows.append({"file": name, "split": split, "vendor": vendor, **{k: rec[k] for k in FIELDS[3:]}})
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_probe_folders(rows, out)
    # a smaller probe set: one drawing per emoji (Twitter's, default skin tone), the one docs/results.md reports
    write_probe_folders([r for r in rows if r["vendor"] == "twitter" and not r["skin"]], out, "probe-twitter-default")
    return rows


def write_probe_folders(rows: list[dict], out: Path, name: str = "probe") -> None:
    """``out/<name>/<split>/`` + ``<split>_labels.npy`` (category ids in sorted-file-name order) + classes.txt."""
    import numpy as np

    probe = out / name
    for split in SPLITS:
        chosen = sorted((r for r in rows if r["split"] == split and r["category"] in CATEGORIES),
                        key=lambda r: Path(r["file"]).name)  # fmt: skip
        if not chosen:
            continue
        (probe / split).mkdir(parents=True, exist_ok=True)
        for r in chosen:
            link = probe / split / Path(r["file"]).name
            try:
                link.hardlink_to(out / r["file"])
            except OSError:  # a file system without hard links
                link.write_bytes((out / r["file"]).read_bytes())
        np.save(probe / f"{split}_labels.npy", np.array([CATEGORIES.index(r["category"]) for r in chosen]))
        bases = sorted({r["base"] for r in chosen})
        np.save(probe / f"{split}_groups.npy", np.array([bases.index(r["base"]) for r in chosen]))
    (probe / "classes.txt").write_text("\n".join(CATEGORIES) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="where the npm tarballs are (or are fetched to)")
    p.add_argument("--out", type=Path, required=True, help="image folder to write: train/, val/, test/, labels.csv")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists and is not empty; pass a new --out", file=sys.stderr)
        return 2
    rows = prepare({v: fetch(args.cache, v) for v in VENDORS}, args.out)
    files = Counter(r["split"] for r in rows)
    emoji = Counter(s for s, _ in {(r["split"], r["base"]) for r in rows})
    for s in SPLITS:
        print(f"{s:5s} {emoji[s]:5d} emoji {files[s]:5d} files")
    print(f"wrote {args.out}/labels.csv ({len(rows)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
