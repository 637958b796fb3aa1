"""A bundle's ``text_cache/``: the CLIP text embeddings of its own vocabulary, made once, offline.

    python -m training.bundle_text models/folk-synth

The node reads it as a read-only seed of its text store (:mod:`folk_ros.core.text_encoder`), so a first
start with the bundle's names needs no CLIP. The file is keyed by the sha256 the manifest holds for the
bundle's CLIP, so it is never used with other weights; its own sha256 is in its metadata. The manifest's
provenance records the command, and the manifest is rewritten (its file hashes are unchanged).
``training.make_bundle`` runs this for every bundle it makes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from folk_ros.core.bundle import BundleManifest, read_manifest, write_manifest
from folk_ros.core.clip import ClipModel
from folk_ros.core.text_encoder import BUNDLE_TEXT_DIR, TextEmbeddingStore, write_rows


def write_bundle_text(manifest: BundleManifest, clip_sha256: str, command: str) -> dict:
    """Encode the manifest's vocabulary under its prompt template with the bundle's CLIP and write
    ``text_cache/<clip_sha256>.safetensors`` into the bundle; returns its provenance entry (the caller
    records it in the manifest). ``clip_sha256``: the manifest's hash of the bundle's CLIP."""
    template, names = manifest.segmenter.prompt_template, list(manifest.vocabulary)
    if not names:
        raise ValueError(f"bundle {manifest.root} has no vocabulary to encode")
    clip = ClipModel(f"local-dir:{manifest.path('clip')}", device="cpu")
    text = clip.encode_text(names, template).float().numpy()
    path = TextEmbeddingStore(manifest.root / BUNDLE_TEXT_DIR, clip_sha256).path
    write_rows(path, [(template, n) for n in names], text)
    return {"command": command, "file": str(path.relative_to(manifest.root)), "names": len(names),
            "template": template}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bundle_text", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="model bundle folder")
    args = p.parse_args(argv)
    command = "python -m training.bundle_text " + " ".join(sys.argv[1:] if argv is None else argv)
    manifest = read_manifest(args.bundle)              # verifies the files, the CLIP's hash among them
    info = write_bundle_text(manifest, manifest.sha256[manifest.clip], command)
    write_manifest(replace(manifest, provenance={**manifest.provenance, "text_cache": info}))
    path = manifest.root / info["file"]
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
