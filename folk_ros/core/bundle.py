"""Model bundles: one folder with Mask3D, the CLIP model, the student and a manifest.

Layout (paths in the manifest are relative to the folder)::

    manifest.json   {"format": "folk_ros.bundle", "version": 2,
                     "mask3d": "mask3d.pt", "clip": "clip", "student": "student.pt",
                     "vocabulary": [...],
                     "segmenter": {"prompt_template": "a {} in the scene", "temperature": 0.07,
                                   "point_features": "backbone", "mask_threshold": 0.01,
                                   "dbscan_eps": 0.12, "nms_iou": 0.5, ...},
                     "sha256": {"mask3d.pt": "...", ...}, "provenance": {...}}
    mask3d.pt       folk_ros.core.mask3d checkpoint (carries its config)
    clip/           open_clip folder (open_clip_config.json + open_clip_model.safetensors)
    student.pt      folk_ros.core.student checkpoint (carries its config)

``segmenter`` is the whole :class:`folk_ros.core.segmenter_config.SegmenterConfig`, stored and read back
whole. Version 1 manifests (the same settings as top-level fields) are still read.

``provenance`` records how our own pipeline produced the files (commands, seeds, data
seeds, metrics). Loading verifies every listed sha256, so a truncated or swapped file is
one clear error instead of a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from folk_ros.core.atomic import write_text_atomic
from folk_ros.core.segmenter_config import SegmenterConfig

FORMAT = "folk_ros.bundle"
VERSION = 2
# version 1 kept these SegmenterConfig fields at the top level
V1_SEGMENTER_FIELDS = ("prompt_template", "temperature", "point_features", "mask_threshold", "dbscan_eps", "nms_iou")
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle folder that cannot be used: missing, malformed or corrupted files."""


@dataclass(frozen=True)
class BundleManifest:
    """The parsed ``manifest.json`` of a bundle; paths resolved against ``root``."""

    root: Path
    mask3d: str = "mask3d.pt"
    clip: str = "clip"
    student: str = "student.pt"
    vocabulary: tuple[str, ...] = ()
    segmenter: SegmenterConfig = SegmenterConfig()   # tau from distillation, proposals chosen on validation
    sha256: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / getattr(self, name)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "mask3d": self.mask3d, "clip": self.clip,
                "student": self.student, "vocabulary": list(self.vocabulary),
                "segmenter": self.segmenter.to_dict(), "sha256": self.sha256,
                "provenance": self.provenance}


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative paths and contents)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_manifest(root: str | os.PathLike, verify: bool = True) -> BundleManifest:
    """Parse and check ``<root>/manifest.json``; BundleError says what is wrong."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"no model bundle at {root}: {MANIFEST} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    if data.get("format") != FORMAT or data.get("version") not in (1, VERSION):
        raise BundleError(f"{path}: expected format {FORMAT!r} version 1 or {VERSION}, "
                          f"got {data.get('format')!r} version {data.get('version')!r}")
    known = set(BundleManifest.__dataclass_fields__) - {"root", "segmenter"}
    fields = {k: v for k, v in data.items() if k in known}
    for name, value in fields.items():
        problem = _type_problem(name, value)
        if problem:
            raise BundleError(f"{path}: field {name!r} {problem}")
    fields["vocabulary"] = tuple(fields.get("vocabulary", ()))
    stored = data.get("segmenter", {}) if data["version"] == VERSION else \
        {k: data[k] for k in V1_SEGMENTER_FIELDS if k in data}
    try:
        fields["segmenter"] = SegmenterConfig.from_dict(stored)
    except ValueError as e:
        raise BundleError(f"{path}: segmenter {e}") from e
    manifest = BundleManifest(root=root, **fields)
    for name in ("mask3d", "clip", "student"):
        if not manifest.path(name).exists():
            raise BundleError(f"bundle {root}: {name} file {getattr(manifest, name)!r} is missing")
    if verify:
        for rel, want in manifest.sha256.items():
            got = file_sha256(root / rel)
            if got != want:
                raise BundleError(f"bundle {root}: {rel} is corrupted or was replaced "
                                  f"(sha256 {got[:12]}... != manifest {want[:12]}...)")
    return manifest


def write_manifest(manifest: BundleManifest) -> Path:
    """Hash the bundle's files into the manifest and write it atomically; returns its path."""
    hashes = {getattr(manifest, n): file_sha256(manifest.path(n)) for n in ("mask3d", "clip", "student")}
    data = manifest.to_json()
    data["sha256"] = hashes
    return write_text_atomic(manifest.root / MANIFEST, json.dumps(data, indent=2) + "\n")


_STRINGS = ("mask3d", "clip", "student")


def _type_problem(name: str, value) -> str | None:
    """What is wrong with the type of manifest field ``name``, or None."""
    if name in _STRINGS and not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {value!r}"
    if name == "vocabulary" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return "must be a list of strings"
    if name == "sha256" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        return "must be an object of file -> sha256 string"
    if name == "provenance" and not isinstance(value, dict):
        return f"must be an object, got {type(value).__name__}"
    return None
