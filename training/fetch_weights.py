"""Fetch the real weights onto a machine with internet access (a robot, a workstation) and check them.

    python -m training.fetch_weights --out weights/ [--only mask3d clip] [--allow-unsafe-checkpoint]
        [--mask3d-url URL] [--clip-hf-repo ORG/NAME] [--sha256 FILE=HEX ...] [--timeout 60]

Two downloads, each checked before anything uses it:

* **Mask3D**: the official ScanNet200 checkpoint (``scannet200_val.ckpt``, Lightning format, from the Mask3D
  authors' server) -> loaded with :func:`folk_ros.core.mask3d.checkpoint.load_checkpoint`, which must match every
  key and shape of the official model -> ``<out>/mask3d_scannet200.pt`` in our weights-only format.
* **CLIP**: OpenAI's ViT-L/14@336 as an open_clip folder (``open_clip_config.json`` + the weights, from the
  Hugging Face repository open_clip names for ``ViT-L-14-336`` / ``openai``) -> loaded through
  :class:`folk_ros.core.clip.ClipModel` (strict: every weight present), one text encoded -> ``<out>/clip``, the
  folder ``local-dir:`` and ``training.make_bundle --clip`` take.

A download goes to ``<out>/downloads/`` through a ``.part`` file that is renamed when complete; a cut download
resumes from where it stopped (HTTP Range) on the next run, and a file already there is verified, not fetched
again. Every file's size must equal what the server announced; its sha256 is printed and must equal a pinned
value when one is given (``--sha256 scannet200_val.ckpt=HEX``; neither publisher states one, so pin what the
first machine printed when you copy the weights to the next). Offline, each download fails with one line
naming the host, and a file copied by hand into ``<out>/downloads/`` is then used as if downloaded.

The official checkpoint holds pickled training settings, which our loaders refuse by default (unpickling can
run code): ``--allow-unsafe-checkpoint`` admits it once, for a source you trust, and the converted file is
weights only. Then distil a student and build a bundle (README, "Real weights").
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from tqdm import tqdm

from folk_ros.core.checkpoint_io import UnsafeCheckpointError
from folk_ros.core.clip import ClipModel
from folk_ros.core.clip_weights import LOCAL_DIR_PREFIX
from folk_ros.core.mask3d.checkpoint import load_checkpoint, save_checkpoint
from folk_ros.core.mask3d.config import PRESETS, Mask3DConfig, preset

MASK3D_URL = "https://omnomnom.vision.rwth-aachen.de/data/mask3d/checkpoints/scannet200/scannet200_val.ckpt"
CLIP_ARCH, CLIP_TAG = "ViT-L-14-336", "openai"
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")   # tried in this order
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download or a check failed; the message is one line saying what to do."""


@dataclass(frozen=True)
class Fetched:
    """A downloaded file and its sha256."""

    path: Path
    sha256: str


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0,
             progress: bool = True) -> Fetched:
    """``url`` into ``dest``, via ``dest.part`` (resumed with an HTTP Range request when a cut download left one).

    A ``dest`` already there is only hashed. Raises :class:`FetchError` when the server cannot be reached or
    answers an error, when fewer bytes arrive than announced, or when the sha256 differs from ``sha256``.
    """
    dest = Path(dest)
    if dest.is_file():
        return _checked(dest, _hashed(dest, hashlib.sha256()).hexdigest(), sha256, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    got, total, started = have, None, False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            started = True
            resumed = have > 0 and response.status == 206
            digest = _hashed(part, hashlib.sha256()) if resumed else hashlib.sha256()
            got = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = got + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=got, unit="B", unit_scale=True, desc=dest.name,
                         disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:      # the part is already whole (a run killed before the rename): again
            part.unlink()
            return download(url, dest, sha256, timeout, progress)
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        if started:
            raise FetchError(f"{url}: the download stopped at {got:,} of {total or 0:,} bytes ({reason}); "
                             f"run again to resume") from err
        raise FetchError(f"cannot download {url} ({reason}): offline? Fetch it where the internet is reachable "
                         f"and copy it to {dest}; this command then checks it without downloading") from err
    if total is not None and got != total:
        raise FetchError(f"{url}: the download stopped at {got:,} of {total:,} bytes; run again to resume")
    found = digest.hexdigest()
    if sha256 is not None and found != sha256.lower():
        part.unlink()
        raise FetchError(f"{url}: sha256 {found} differs from the pinned {sha256}; the file was removed")
    part.replace(dest)
    return Fetched(dest, found)


def _hashed(path: Path, digest):
    """``digest`` updated with the bytes of ``path``."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def _checked(path: Path, found: str, pinned: str | None, url: str) -> Fetched:
    if pinned is not None and found != pinned.lower():
        raise FetchError(f"{path} (from {url}): sha256 {found} differs from the pinned {pinned}; "
                         f"remove it to download again")
    return Fetched(path, found)


# --------------------------------------------------------------------------- the two models


def fetch_mask3d(out: Path, url: str = MASK3D_URL, pins: dict[str, str] | None = None,
                 allow_unsafe: bool = False, timeout: float = 60.0, progress: bool = True,
                 config: Mask3DConfig | None = None) -> dict:
    """Download and check the Mask3D checkpoint, write ``<out>/mask3d_scannet200.pt``; returns a report.

    ``config``: the architecture the file must match; None: the file's own (ours), else the official ScanNet200.
    """
    name = url.rsplit("/", 1)[-1]
    got = download(url, out / "downloads" / name, (pins or {}).get(name), timeout, progress)
    try:
        model, report = load_checkpoint(got.path, config, strict=False, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as err:
        raise FetchError(f"{err}. If you trust {url} (sha256 {got.sha256}), run again with "
                         f"--allow-unsafe-checkpoint: the converted file holds weights only") from err
    if not report.ok:
        raise FetchError(f"{got.path} is not a Mask3D checkpoint of this architecture: "
                         + str(report).replace("\n", "; "))
    target = out / "mask3d_scannet200.pt"
    save_checkpoint(target, model)
    return {"source": url, "file": str(got.path), "sha256": got.sha256, "written": str(target),
            "parameters": sum(p.numel() for p in model.parameters()), "queries": model.cfg.num_queries,
            "input_features": model.cfg.input_features}


def clip_urls(hf_repo: str | None = None) -> tuple[str, list[str]]:
    """(config URL, weight URLs in the order to try) of the open_clip folder of ViT-L/14@336 (OpenAI)."""
    if hf_repo is None:
        hf_repo = open_clip.get_pretrained_cfg(CLIP_ARCH, CLIP_TAG)["hf_hub"]
    base = f"https://huggingface.co/{hf_repo.strip('/')}/resolve/main"
    return f"{base}/{CLIP_CONFIG_FILE}", [f"{base}/{name}" for name in CLIP_WEIGHT_FILES]


def fetch_clip(out: Path, config_url: str, weight_urls: list[str], pins: dict[str, str] | None = None,
               timeout: float = 60.0, progress: bool = True) -> dict:
    """Download the open_clip folder (config + the first weight file the server has), load it strictly,
    encode one text, and write it to ``<out>/clip``; returns a report."""
    pins, folder = pins or {}, out / "downloads" / "clip"
    config = download(config_url, folder / CLIP_CONFIG_FILE, pins.get(CLIP_CONFIG_FILE), timeout, progress)
    weights, misses = None, []
    for url in weight_urls:
        name = url.rsplit("/", 1)[-1]
        try:
            weights = download(url, folder / name, pins.get(name), timeout, progress)
            break
        except FetchError as err:
            if "HTTP 404" not in str(err):
                raise
            misses.append(name)
    if weights is None:
        raise FetchError(f"none of {misses} exists next to {config_url}")
    try:
        clip = ClipModel(LOCAL_DIR_PREFIX + str(folder), device="cpu")
        text = clip.encode_text(["chair"], "a {} in the scene")
    except Exception as err:   # open_clip raises several types for a bad folder; one line says which file
        raise FetchError(f"{folder} does not load as an open_clip model: {type(err).__name__}: {err}") from err
    if not torch.isfinite(text).all():
        raise FetchError(f"{folder}: the text embedding is not finite")
    target = clip.save(out / "clip")
    files = {config.path.name: config.sha256, weights.path.name: weights.sha256}
    return {"source": config_url.rsplit("/", 1)[0], "files": files, "written": str(target),
            "embed_dim": clip.embed_dim, "description": clip.description,
            "parameters": sum(p.numel() for p in clip.model.parameters())}


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.fetch_weights", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the downloads and the converted weights")
    p.add_argument("--only", nargs="+", choices=("mask3d", "clip"), default=["mask3d", "clip"],
                   help="which weights to fetch (default both)")
    p.add_argument("--mask3d-url", default=MASK3D_URL, help="the Mask3D checkpoint (default: official ScanNet200)")
    p.add_argument("--mask3d-preset", choices=PRESETS, default=None,
                   help="the architecture a checkpoint without its own config must match (default: scannet200)")
    p.add_argument("--clip-hf-repo", default=None,
                   help=f"Hugging Face repository of the open_clip folder (default: open_clip's for "
                        f"{CLIP_ARCH} {CLIP_TAG})")
    p.add_argument("--clip-base-url", default=None, help="a mirror serving the open_clip folder's files instead")
    p.add_argument("--sha256", nargs="*", default=[], metavar="FILE=HEX", help="pinned sha256 per file name")
    p.add_argument("--allow-unsafe-checkpoint", action="store_true",
                   help="admit the official checkpoint's pickled settings (a source you trust)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a download fails")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    pins = {}
    for item in args.sha256:
        name, sep, digest = item.partition("=")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            p.error(f"--sha256 takes FILE=<64 hex digits>, got {item!r}")
        pins[name] = digest.lower()
    args.pins = pins
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when every asked-for model was fetched and checked, 1 otherwise (one line each)."""
    args = parse_args(argv)
    progress, failed = not args.quiet, 0
    if "mask3d" in args.only:
        try:
            r = fetch_mask3d(args.out, args.mask3d_url, args.pins, args.allow_unsafe_checkpoint, args.timeout,
                             progress, preset(args.mask3d_preset) if args.mask3d_preset else None)
            print(f"mask3d: {r['written']} ({r['parameters'] / 1e6:.2f} M parameters, every key matched; "
                  f"source sha256 {r['sha256']})")
        except FetchError as err:
            print(f"mask3d: error: {err}", file=sys.stderr)
            failed += 1
    if "clip" in args.only:
        if args.clip_base_url:
            base = args.clip_base_url.rstrip("/")
            config_url, weight_urls = f"{base}/{CLIP_CONFIG_FILE}", [f"{base}/{n}" for n in CLIP_WEIGHT_FILES]
        else:
            config_url, weight_urls = clip_urls(args.clip_hf_repo)
        try:
            r = fetch_clip(args.out, config_url, weight_urls, args.pins, args.timeout, progress)
            print(f"clip: {r['written']} ({r['description']}, {r['parameters'] / 1e6:.1f} M parameters, "
                  f"{r['embed_dim']}-d; sha256 " + ", ".join(f"{k}={v}" for k, v in r["files"].items()) + ")")
        except FetchError as err:
            print(f"clip: error: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
