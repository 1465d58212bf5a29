#!/usr/bin/env python
"""Build real image folders, none of them digits, to check vqgpt's defaults on data nobody tuned on.

Everything comes from Debian packages installed on this machine (nothing is downloaded at run
time) and is built deterministically from ``--seed``. Each set is a training folder as
``vqgpt --data FOLDER`` reads it (sub-folder = class) plus a separate ``…-test`` folder of images
that are not in the training folder (other renderings, other icons, other photographs):

| set | kind | classes | from |
|---|---|---|---|
| ``letters-a`` | 32 px grey glyphs A–Z | 26 | font families of group A (DejaVu, URW base35 and its TeX Gyre / FreeFont descendants, Latin Modern / CMU, STIX, ADF, Go, Cantarell, PT, …) |
| ``letters-b`` | 32 px grey glyphs A–Z | 26 | font families of group B (Liberation / Croscore, Carlito / Caladea, Noto, Roboto, Open Sans, Lato, Libertine, EB Garamond, SIL, Fira, …) — no family shared with A |
| ``letters-c`` | 32 px grey glyphs A–Z | 26 | font families of group C (Inter, Manrope, Karla, JetBrains Mono, Lemonada, Cardo, Fanwood, Goudy Bookletter, Quattrocento, Comfortaa, B612, Humor Sans and dkg-handwriting, …) — none shared with A or B, built last and only measured |
| ``letters-d`` | 32 px grey glyphs A–Z | 26 | training letters only, never measured: 86 more packages (83 with usable A–Z) (ADF, Vollkorn, Sora, Roboto Slab, OCR-A/B, Thai TLWG's Latin, GFS, aenigma's display faces, scripts, blackletter, …) — no family shared with C or derived from one of C's |
| ``letters-e`` | 32 px grey glyphs A–Z | 26 | built after a prior was trained on A–D, only measured: 10 more packages (Oxygen, National Park, Klaudia / Berenika, GFS Theokritos, Linex's school scripts, Korean and Japanese fonts' Latin, …) — no family shared with A–D |
| ``icons-a`` | colour RGBA icons, 32 px where drawn | theme categories | oxygen, elementary-xfce, nuoveXT2, Faenza icon themes |
| ``icons-b`` | colour RGBA icons, 32 px where drawn | theme categories | mate, gnome, Tango, Moka icon themes (no theme shared with A) |
| ``photos`` | 32 px colour crops of photographs | none | photographic wallpapers of plasma-workspace-wallpapers and mate-backgrounds; the test folder's crops come from photographs the training crops never touch |
| ``photos-wide`` | the same, from 51 photographs | none | those 20 photographs, 13 Ubuntu wallpapers (lomiri-wallpapers-16.04/-20.04) and 18 OpenCV sample photographs (opencv-doc); the same test photographs |

The letter sets use disjoint font families (and families derived from one another stay in
one group), as do the two icon sets' themes, so one can be tuned on and the others reported.
``OUT/MANIFEST.json`` records, per set, the packages and their versions, every font / theme /
photograph used, the image counts and a digest of all written files (same packages + same seed
→ same digest).

    OMP_NUM_THREADS=1 python scripts/build_heldout_sets.py --out /tmp/heldout            # all sets
    OMP_NUM_THREADS=1 python scripts/build_heldout_sets.py --out /tmp/heldout --sets letters-b icons-a
    python scripts/build_heldout_sets.py --print-apt                                     # the install command

Needs Pillow, numpy and fontTools (all in vqgpt's environment) and the Debian packages that
``--print-apt`` lists; a missing package stops the build with the ``apt-get install`` line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --------------------------------------------------------------------------- what each set needs

LETTER_GROUPS = {
    # Families derived from one another stay in one group: DejaVu ← Bitstream Vera → Hack;
    # URW base35 → TeX Gyre, FreeFont; Computer Modern → Latin Modern, CMU.
    "letters-a": [
        "fonts-dejavu-core", "fonts-hack", "fonts-urw-base35", "fonts-texgyre", "fonts-freefont-ttf",
        "fonts-lmodern", "fonts-cmu", "fonts-stix", "fonts-adf-accanthis", "fonts-adf-gillius",
        "fonts-adf-universalis", "fonts-adf-berenis", "fonts-adf-baskervald", "fonts-adf-verana",
        "fonts-go", "fonts-cantarell", "fonts-paratype", "fonts-dosis", "fonts-play",
        "fonts-averia-sans-gwf", "fonts-averia-serif-gwf",
    ],
    # Liberation 2 ← Croscore (Arimo/Tinos/Cousine); Carlito ← Lato; Noto Sans ← Open Sans.
    "letters-b": [
        "fonts-liberation2", "fonts-croscore", "fonts-crosextra-carlito", "fonts-crosextra-caladea",
        "fonts-lato", "fonts-noto-core", "fonts-open-sans", "fonts-roboto-unhinted", "fonts-linuxlibertine",
        "fonts-ebgaramond", "fonts-sil-gentiumplus", "fonts-sil-charis", "fonts-sil-andika",
        "fonts-firacode", "fonts-inconsolata", "fonts-comic-neue", "fonts-cabin", "fonts-oldstandard",
        "fonts-quicksand", "fonts-junicode", "fonts-anonymous-pro",
    ],
    # Built last and only ever measured (never tuned on): no family shared with
    # A or B, nor derived from one of theirs (OpenDyslexic ← Bitstream Vera, Roboto Slab, Courier
    # Prime, Doulos SIL left out); two handwriting faces (Humor Sans, dkg-handwriting).
    "letters-c": [
        "fonts-inter", "fonts-jetbrains-mono", "fonts-karla", "fonts-manrope", "fonts-league-spartan",
        "fonts-b612", "fonts-cardo", "fonts-clear-sans", "fonts-comfortaa", "fonts-mononoki",
        "fonts-fantasque-sans", "fonts-quattrocento", "fonts-goudybookletter", "fonts-prociono", "fonts-fanwood",
        "fonts-humor-sans", "fonts-dkg-handwriting", "fonts-jura", "fonts-junction",
        "fonts-bebas-neue", "fonts-monoid", "fonts-lemonada",
    ],
    # More training letters only (for a prior that has seen more designs; never measured): no family
    # shared with C or derived from one of C's (League Mono, Linden Hill, Inter Variable and the
    # Monoid variants left out); display, blackletter, script, OCR and terminal faces included.
    "letters-d": [
        "fonts-adf-ikarius", "fonts-adf-irianis", "fonts-adf-libris", "fonts-adf-mekanus", "fonts-adf-oldania",
        "fonts-adf-romande", "fonts-adf-solothurn", "fonts-adf-switzera", "fonts-adf-tribun", "fonts-allerta",
        "fonts-arkpandora", "fonts-beteckna", "fonts-blankenburg", "fonts-breip", "fonts-cabinsketch",
        "fonts-century-catalogue", "fonts-cherrybomb", "fonts-dancingscript", "fonts-dustin", "fonts-ecolier-court",
        "fonts-elstob", "fonts-engadget", "fonts-eurofurence", "fonts-f500", "fonts-femkeklaver", "fonts-gamaliel",
        "fonts-georgewilliams", "fonts-gnutypewriter", "fonts-gotico-antiqua", "fonts-isabella", "fonts-joscelyn",
        "fonts-kaushanscript", "fonts-kristi", "fonts-le-murmure", "fonts-leckerli-one", "fonts-levien-museum",
        "fonts-levien-typoscript", "fonts-lobster", "fonts-lobstertwo", "fonts-millimetre", "fonts-monofur",
        "fonts-mph-2b-damase", "fonts-ocr-a", "fonts-ocr-b", "fonts-okolaks", "fonts-opendin", "fonts-radisnoir",
        "fonts-rampart", "fonts-reggae", "fonts-roadgeek", "fonts-rocknroll", "fonts-routed-gothic",
        "fonts-rufscript", "fonts-sora", "fonts-staypuft", "fonts-summersby", "fonts-tiresias", "fonts-tomsontalks",
        "fonts-tuffy", "fonts-ubuntu-title", "fonts-vollkorn", "fonts-yanone-kaffeesatz", "fonts-yrsa-rasa",
        "fonts-oflb-euterpe", "fonts-roboto-slab", "fonts-opendyslexic", "fonts-courier-prime", "fonts-sil-doulos",
        "fonts-hermit", "fonts-agave", "fonts-3270", "fonts-tlwg-garuda-ttf", "fonts-tlwg-kinnari-ttf",
        "fonts-tlwg-loma-ttf", "fonts-tlwg-purisa-ttf", "fonts-tlwg-sawasdee-ttf", "fonts-tlwg-typist-ttf",
        "fonts-tlwg-umpush-ttf", "fonts-tlwg-waree-ttf", "fonts-gfs-didot", "fonts-gfs-bodoni-classic",
        "fonts-gfs-neohellenic", "fonts-aenigma", "fonts-uralic", "fonts-sil-andikanewbasic", "fonts-unikurdweb",
    ],
    # Built after a prior had been trained on A–D, only measured: no family shared with A–D (GFS
    # Artemisia's package also holds GFS Didot, the SIL fonts' Latin may be Gentium's: left out);
    # school handwriting (Abecedario), Korean and Japanese fonts' Latin, a Malayalam font's Latin.
    "letters-e": [
        "fonts-gfs-theokritos", "fonts-oxygen", "fonts-linex", "fonts-klaudia-berenika", "fonts-national-park",
        "fonts-kiloji", "fonts-alee", "fonts-gemunu-libre", "fonts-smc-chilanka", "fonts-unfonts-core",
    ],
}
ICON_THEMES = {  # set → (Debian package, theme folder) in order of precedence for duplicate names
    "icons-a": [("oxygen-icon-theme", "/usr/share/icons/oxygen/base"),
                ("elementary-xfce-icon-theme", "/usr/share/icons/elementary-xfce"),
                ("lxde-icon-theme", "/usr/share/icons/nuoveXT2"),
                ("faenza-icon-theme", "/usr/share/icons/Faenza")],
    "icons-b": [("mate-icon-theme", "/usr/share/icons/mate"),
                ("gnome-icon-theme", "/usr/share/icons/gnome"),
                ("tango-icon-theme", "/usr/share/icons/Tango"),
                ("moka-icon-theme", "/usr/share/icons/Moka")],
}
# Photographs only (illustrations and abstract wallpapers left out); the last photograph of each
# package only ever feeds the test folder, as do the ones named in PHOTO_TEST.
PHOTO_FILES = {
    "plasma-workspace-wallpapers": [
        f"/usr/share/wallpapers/{name}/contents/images/{res}" for name, res in [
            ("BytheWater", "1280x1024.jpg"), ("ColdRipple", "1280x1024.jpg"), ("ColorfulCups", "2560x1600.jpg"),
            ("DarkestHour", "1280x1024.jpg"), ("EveningGlow", "1280x1024.jpg"), ("FallenLeaf", "1280x1024.jpg"),
            ("Grey", "1280x1024.jpg"), ("Kite", "1280x1024.jpg"), ("OneStandsOut", "1280x1024.jpg"),
            ("Path", "1280x1024.jpg"), ("Volna", "5120x2880.jpg"), ("summer_1am", "1280x1024.jpg"),
        ]
    ],
    "mate-backgrounds": [
        f"/usr/share/backgrounds/mate/nature/{name}.jpg" for name in [
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
            "TwoWings", "Wood", "YellowFlower",
        ]
    ],
}
PHOTO_TEST = ("ColorfulCups", "Path", "LadyBird", "Storm")
# `photos-wide`: the photographs above and 31 more (Ubuntu wallpapers shipped for Lomiri, OpenCV's
# sample photographs), for a prior that has seen more than a few dozen scenes; the same test photographs.
PHOTO_FILES_WIDE = {
    **PHOTO_FILES,
    "lomiri-wallpapers-16.04": [f"/usr/share/backgrounds/{name}.jpg" for name in [
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi",
    ]],
    "lomiri-wallpapers-20.04": ["/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
    "opencv-doc": [f"/usr/share/doc/opencv-doc/examples/data/{name}" for name in [
        "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "building.jpg",
        "butterfly.jpg", "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
        "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "stuff.jpg",
    ]],
}

PHOTO_SETS = {"photos": (PHOTO_FILES, 2_000), "photos-wide": (PHOTO_FILES_WIDE, 10_000)}  # photographs, training crops

SETS = ("letters-a", "letters-b", "letters-c", "letters-d", "letters-e", "icons-a", "icons-b", *PHOTO_SETS)


def packages_for(name: str) -> list[str]:
    if name in LETTER_GROUPS:
        return LETTER_GROUPS[name]
    if name in ICON_THEMES:
        return [pkg for pkg, _ in ICON_THEMES[name]]
    return list(PHOTO_SETS[name][0])


def installed_version(pkg: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", pkg],
                             capture_output=True, text=True, check=False)
    except FileNotFoundError:
        sys.exit("error: dpkg-query not found: these sets are built from Debian packages (Debian or Ubuntu needed)")
    if out.returncode != 0 or "install ok installed" not in out.stdout:
        return None
    return out.stdout.split("\t", 1)[1]


def require_packages(names: list[str]) -> dict[str, str]:
    wanted = sorted({p for n in names for p in packages_for(n)})
    versions = {p: installed_version(p) for p in wanted}
    missing = [p for p, v in versions.items() if v is None]
    if missing:
        sys.exit(f"error: missing Debian package(s) for {', '.join(names)}; install them with: "
                 f"apt-get update && apt-get install -y --no-install-recommends {' '.join(missing)}")
    return versions  # type: ignore[return-value]


def package_files(pkg: str) -> list[str]:
    out = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, text=True, check=True)
    return sorted(line for line in out.stdout.splitlines() if line)


def stable_seed(seed: int, *parts: str) -> int:
    """A seed per set, stable across Python runs (``hash()`` is salted)."""
    return (seed * 1_000_003 + zlib.crc32("/".join(parts).encode())) % 2**32


# --------------------------------------------------------------------------- letters

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
# Fonts whose "A–Z" are symbols, math alphabets or size variants rather than letters.
NOT_LETTER_FONTS = re.compile(r"symbol|dingbat|d050000l|math|sizes?\d|size[a-z]|variants|integrals|nonuni|emoji|"
                              r"music|braille|icons?\b|keyboard", re.IGNORECASE)


def font_family(path: str) -> tuple[str, str] | None:
    """(family, style) of a font file, or None when it does not map all of A–Z."""
    from fontTools.ttLib import TTFont

    try:
        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        names = font["name"]
        family = names.getDebugName(16) or names.getDebugName(1) or Path(path).stem
        style = names.getDebugName(17) or names.getDebugName(2) or ""
        font.close()
    except Exception:  # fontTools raises many kinds on odd files; such a font is simply not used
        return None
    if not all(ord(ch) in cmap for ch in LETTERS):
        return None
    if NOT_LETTER_FONTS.search(family) or NOT_LETTER_FONTS.search(Path(path).name):
        return None
    return family, style


def usable_fonts(packages: list[str]) -> dict[str, dict[str, list[str]]]:
    """package → family → [font paths] for every font file of ``packages`` that draws A–Z as
    distinct glyphs (a file shipped by two packages counts for the first)."""
    found: dict[str, dict[str, list[str]]] = {}
    seen: set[str] = set()
    for pkg in packages:
        for path in package_files(pkg):
            if not path.lower().endswith((".ttf", ".otf")) or not Path(path).is_file():
                continue
            real = str(Path(path).resolve())
            if real in seen:
                continue
            seen.add(real)
            named = font_family(path)
            if named is None or not _draws_distinct_letters(path):
                continue
            found.setdefault(pkg, {}).setdefault(named[0], []).append(path)
    return {pkg: {fam: sorted(paths) for fam, paths in sorted(fams.items())} for pkg, fams in found.items()}


def _draws_distinct_letters(path: str) -> bool:
    try:
        font = ImageFont.truetype(path, 48)
        masks = {bytes(font.getmask(ch)) for ch in LETTERS}
    except OSError:
        return False
    return len(masks) == len(LETTERS) and all(font.getbbox(ch)[2] > font.getbbox(ch)[0] for ch in LETTERS)


def render_letter(path: str, ch: str, rng: np.random.Generator, size: int = 32, supersample: int = 4) -> Image.Image:
    """One glyph, dark on white, 8-bit grey ``size × size``: cap height 55–78% of the image
    (so I and W keep their proportions within a font), shifted up to ±2 px, drawn at 4× and
    box-filtered down."""
    big = size * supersample
    ref = ImageFont.truetype(path, 200)
    left, top, right, bottom = ref.getbbox("H")
    cap = max(bottom - top, 1)
    px = 200 * rng.uniform(0.55, 0.78) * big / cap
    font = ImageFont.truetype(path, max(8, round(px)))
    left, top, right, bottom = font.getbbox(ch)
    w, h = right - left, bottom - top
    limit = 0.92 * big
    if max(w, h) > limit:  # a wide glyph (W, M in a wide face) is shrunk to fit
        font = ImageFont.truetype(path, max(8, round(px * limit / max(w, h))))
        left, top, right, bottom = font.getbbox(ch)
        w, h = right - left, bottom - top
    shift = 2 * supersample
    dx = float(np.clip(rng.uniform(-shift, shift), -(big - w) / 2, (big - w) / 2))
    dy = float(np.clip(rng.uniform(-shift, shift), -(big - h) / 2, (big - h) / 2))
    img = Image.new("L", (big, big), 255)
    ImageDraw.Draw(img).text(((big - w) / 2 + dx - left, (big - h) / 2 + dy - top), ch, font=font, fill=0)
    return img.resize((size, size), Image.Resampling.BOX)


def build_letters(name: str, out: Path, seed: int, per_class: int, test_per_class: int) -> dict:
    """Each image draws a package, then a family of it, then a font file (weight / style) of
    that family, uniformly: a package with many variants of one design (Latin Modern) weighs
    as much as one with a single family."""
    fonts = usable_fonts(LETTER_GROUPS[name])
    n_families = sum(len(f) for f in fonts.values())
    if n_families < 5:
        sys.exit(f"error: only {n_families} usable font families for {name}; are the font packages installed?")
    pkgs = list(fonts)
    rng = np.random.default_rng(stable_seed(seed, name))
    counts = {"train": 0, "test": 0}
    for ch in LETTERS:
        for split, n, folder in (("train", per_class, out / name), ("test", test_per_class, out / f"{name}-test")):
            (folder / ch).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                families = fonts[pkgs[rng.integers(len(pkgs))]]
                paths = families[list(families)[rng.integers(len(families))]]
                render_letter(paths[rng.integers(len(paths))], ch, rng).save(folder / ch / f"{ch}_{i:04d}.png")
                counts[split] += 1
    return {"fonts": fonts, "num_families": n_families,
            "num_font_files": sum(len(p) for f in fonts.values() for p in f.values()),
            "train_images": counts["train"], "test_images": counts["test"], "classes": len(LETTERS)}


# --------------------------------------------------------------------------- icons

# Theme folder names → one category name; anything else is left out (animations are strips of
# frames; "legacy"/"ui"/"special" are not categories of what an icon shows).
ICON_CATEGORIES = {
    "actions": "actions", "apps": "apps", "applets": "apps", "categories": "categories", "devices": "devices",
    "emblems": "emblems", "emotes": "emotes", "mimetypes": "mimetypes", "mimes": "mimetypes",
    "places": "places", "filesystems": "places", "status": "status", "notifications": "status", "panel": "status",
}


def icon_candidates(theme_dir: str, min_size: int) -> dict[tuple[str, str], Path]:
    """(category, icon name) → the PNG drawn at the smallest size ≥ ``min_size``."""
    best: dict[tuple[str, str], tuple[int, Path]] = {}
    root = Path(theme_dir)
    for path in sorted(root.rglob("*.png")):
        parts = path.relative_to(root).parts
        if len(parts) != 3 or not path.is_file():  # broken symlinks exist in some themes
            continue
        a, b, filename = parts
        size_dir, cat = (a, b) if re.fullmatch(r"\d+(x\d+)?", a) else (b, a)
        if not re.fullmatch(r"\d+(x\d+)?", size_dir) or cat not in ICON_CATEGORIES:
            continue
        size = int(size_dir.split("x")[0])
        key = (ICON_CATEGORIES[cat], Path(filename).stem)
        if size >= min_size and (key not in best or size < best[key][0]):
            best[key] = (size, path)
    return {k: p for k, (_, p) in best.items()}


def _thumb(rgba: Image.Image) -> np.ndarray:
    """The icon as the models see it at 32 px: composited on white, float RGB in [0, 1]."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32).reshape(-1) / 255.0


def build_icons(name: str, out: Path, seed: int, test_fraction: float, min_size: int, min_per_class: int,
                near_duplicate: float = 0.02) -> dict:
    """One PNG per (theme, category, icon name) at the smallest drawn size ≥ ``min_size``;
    aliases (symlinks), exact copies and near-copies (RMS difference < ``near_duplicate`` at
    32 px on white — the same drawing in two themes or under two names) are kept once."""
    chosen: list[tuple[str, str, str, Path]] = []
    candidates = {theme_dir: icon_candidates(theme_dir, min_size) for _, theme_dir in ICON_THEMES[name]}
    thumbs = np.empty((sum(len(c) for c in candidates.values()), 32 * 32 * 3), dtype=np.float32)
    themes = {}
    for pkg, theme_dir in ICON_THEMES[name]:
        theme = Path(theme_dir).name if Path(theme_dir).name != "base" else Path(theme_dir).parent.name
        found = candidates[theme_dir]
        kept, seen = 0, set()
        for (cat, icon), path in sorted(found.items()):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            with Image.open(path) as img:
                img.load()
                if img.size[0] != img.size[1]:
                    continue
                rgba = img.convert("RGBA")
            if np.asarray(rgba)[..., 3].max() == 0:
                continue  # a blank icon
            t = _thumb(rgba)
            if chosen and np.sqrt(((thumbs[:len(chosen)] - t) ** 2).mean(axis=1)).min() < near_duplicate:
                continue
            thumbs[len(chosen)] = t
            chosen.append((cat, theme, icon, path))
            kept += 1
        themes[theme] = {"package": pkg, "folder": theme_dir, "icons": kept}
    per_cat: dict[str, list[tuple[str, str, Path]]] = {}
    for cat, theme, icon, path in sorted(chosen):
        per_cat.setdefault(cat, []).append((theme, icon, path))
    dropped = {c: len(v) for c, v in per_cat.items() if len(v) < min_per_class}
    per_cat = {c: v for c, v in per_cat.items() if len(v) >= min_per_class}
    rng = np.random.default_rng(stable_seed(seed, name))
    counts = {"train": 0, "test": 0}
    per_class = {}
    for cat, items in per_cat.items():
        order = rng.permutation(len(items))
        n_test = max(1, round(len(items) * test_fraction))
        test_ids = set(order[:n_test].tolist())
        for i, (theme, icon, path) in enumerate(items):
            split = "test" if i in test_ids else "train"
            folder = out / (name if split == "train" else f"{name}-test") / cat
            folder.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as img:  # re-saved as RGBA PNG: palette icons become plain RGBA
                img.convert("RGBA").save(folder / f"{theme}__{icon}.png")
            counts[split] += 1
        per_class[cat] = {"train": len(items) - n_test, "test": n_test}
    return {"themes": themes, "min_source_size": min_size, "near_duplicate_rms": near_duplicate, "per_class": per_class,
            "categories_dropped_as_too_small": dropped, "train_images": counts["train"],
            "test_images": counts["test"], "classes": len(per_cat)}


# --------------------------------------------------------------------------- photos

def build_photos(name: str, out: Path, seed: int, train_crops: int, test_crops: int, size: int) -> dict:
    files_of = PHOTO_SETS[name][0]
    photos = [p for files in files_of.values() for p in files]
    missing = [p for p in photos if not Path(p).is_file()]
    if missing:
        sys.exit(f"error: photographs missing ({missing[0]} …); reinstall: apt-get install --reinstall "
                 f"{' '.join(files_of)}")
    test = [p for p in photos if any(f"/{t}/" in p or p.endswith(f"/{t}.jpg") for t in PHOTO_TEST)]
    train = [p for p in photos if p not in test]
    rng = np.random.default_rng(stable_seed(seed, name))
    counts = {}
    for split, files, n, folder in (("train", train, train_crops, out / name), ("test", test, test_crops, out / f"{name}-test")):
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for p in files:
            with Image.open(p) as img:
                img.draft("RGB", (1024, 1024))  # JPEG DCT scaling: a big wallpaper decodes at ≥ 1024 px
                images.append(img.convert("RGB"))
        for i in range(n):
            k = i % len(images)  # every photograph gives the same number of crops (±1)
            img = images[k]
            w, h = img.size
            side = max(size, round(min(w, h) * rng.uniform(0.08, 0.35)))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
            crop.save(folder / f"{Path(files[k]).parts[-4] if '/wallpapers/' in files[k] else Path(files[k]).stem}_{i:05d}.png")
        counts[split] = n
    return {"train_photos": train, "test_photos": test, "crop_side": "8–35% of the shorter side",
            "size": size, "train_images": counts["train"], "test_images": counts["test"], "classes": 0}


# --------------------------------------------------------------------------- main

def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder that receives one sub-folder per set (and …-test)")
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--letters-per-class", type=int, default=60, help="training images per letter")
    ap.add_argument("--letters-test-per-class", type=int, default=16, help="test images per letter")
    ap.add_argument("--icon-test-fraction", type=float, default=0.1, help="share of each category's icons kept for the test folder")
    ap.add_argument("--icon-min-size", type=int, default=32, help="the smallest drawn size taken from a theme (px)")
    ap.add_argument("--icon-min-per-class", type=int, default=20, help="categories with fewer icons are left out")
    ap.add_argument("--photo-crops", type=int, default=None,
                    help="training crops (default: 2,000 for photos, 10,000 for photos-wide)")
    ap.add_argument("--photo-test-crops", type=int, default=400)
    ap.add_argument("--photo-size", type=int, default=32)
    ap.add_argument("--overwrite", action="store_true", help="replace sets that already exist in --out")
    ap.add_argument("--print-apt", action="store_true", help="print the apt-get command for --sets and exit")
    args = ap.parse_args(argv)

    if args.print_apt:
        pkgs = sorted({p for n in args.sets for p in packages_for(n)})
        print(f"apt-get update && apt-get install -y --no-install-recommends {' '.join(pkgs)}")
        return 0
    if args.out is None:
        ap.error("--out is required")
    versions = require_packages(args.sets)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in args.sets:
        folders = [args.out / name, args.out / f"{name}-test"]
        if any(f.exists() for f in folders):
            if not args.overwrite:
                sys.exit(f"error: {folders[0]} already exists; pass --overwrite to rebuild it")
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)
        print(f"building {name} …", flush=True)
        if name in LETTER_GROUPS:
            info = build_letters(name, args.out, args.seed, args.letters_per_class, args.letters_test_per_class)
        elif name in ICON_THEMES:
            info = build_icons(name, args.out, args.seed, args.icon_test_fraction, args.icon_min_size,
                               args.icon_min_per_class)
        else:
            crops = args.photo_crops or PHOTO_SETS[name][1]
            info = build_photos(name, args.out, args.seed, crops, args.photo_test_crops, args.photo_size)
        info.update(seed=args.seed, packages={p: versions[p] for p in packages_for(name)},
                    train_folder=str(folders[0]), test_folder=str(folders[1]),
                    digest={"train": folder_digest(folders[0]), "test": folder_digest(folders[1])})
        manifest[name] = info
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        extra = f", {info['num_families']} font families / {info['num_font_files']} files" if "num_families" in info else ""
        print(f"  {name}: {info['train_images']} training + {info['test_images']} test images, "
              f"{info['classes'] or 'no'} classes{extra} → {folders[0]}", flush=True)
    print(f"manifest: {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
