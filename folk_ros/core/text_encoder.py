"""The runtime's text side: vocabulary embeddings without waiting for CLIP where they were made before.

The node needs CLIP only to turn names into text embeddings (the classify step and the map's queries).
Loading it costs seconds (``import open_clip`` pulls in torchvision and ``torch._dynamo``, then the
weights), so the text embeddings it makes are also kept on disk (:class:`TextEmbeddingStore`, one file
per CLIP model). :class:`TextEncoder` answers a vocabulary from that store when every prompt is there,
and loads CLIP only when one is missing: a node restarted with a vocabulary it has seen before is ready
without CLIP, and loads it on a thread of its own afterwards (:meth:`TextEncoder.preload`) for the next
new name.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from folk_ros.core import torch_threads
from folk_ros.core.atomic import atomic_path
from folk_ros.core.clip import ClipModel

log = logging.getLogger(__name__)

BUNDLE_TEXT_DIR = "text_cache"
"""A bundle's folder of text embeddings of its own vocabulary (a read-only seed of the store, written by
``training.make_bundle``): the first start with those names needs no CLIP either."""

STORE_ENTRIES = 10_000
"""Most prompts one store file keeps (the oldest go first): 31 MB of float32 at CLIP ViT-L's 768-d. The file
is rewritten whole when a vocabulary brings new names, so it stays small."""


def source_key(path: str | Path) -> str:
    """An identity of CLIP weights on disk without reading them: sha256 of each file's path, size and
    modification time (a bundle's verified sha256 is the better key where there is one)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class TextEmbeddingStore:
    """Text embeddings on disk, ``<folder>/<model_key>.safetensors``: one (P, D) float32 array and, in
    the file's metadata, the (template, name) of each row and the array's sha256 (checked when read: a
    damaged file is never trusted). Read once, rewritten atomically (whole) when prompts are added; two
    processes adding at once lose one's additions, never the file. ``seeds``: folders whose
    ``<model_key>.safetensors`` are read too, never written (a bundle's own text, :data:`BUNDLE_TEXT_DIR`)."""

    def __init__(self, folder: str | Path, model_key: str, max_entries: int = STORE_ENTRIES,
                 seeds: Sequence[str | Path] = ()):
        if not model_key or any(c in model_key for c in "/\\\0"):
            raise ValueError(f"model_key must be a non-empty file-name part, got {model_key!r}")
        self.path = Path(folder).expanduser() / f"{model_key}.safetensors"
        self.seeds = [Path(seed).expanduser() / self.path.name for seed in seeds]
        self.max_entries = max_entries
        self._rows: dict[tuple[str, str], np.ndarray] | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> dict[tuple[str, str], np.ndarray]:
        if self._rows is None:
            self._rows = {}
            for path in [*self.seeds, self.path]:       # the store's own rows last: they win
                if path.exists():
                    self._rows.update(_read_rows(path))
        return self._rows

    def get(self, template: str, names: Sequence[str]) -> np.ndarray | None:
        """(K, D) float32 rows of ``names`` under ``template``, or None when one is missing."""
        with self._lock:
            rows = self._loaded()
            found = [rows.get((template, n)) for n in names]
        if not found or any(r is None for r in found):
            return None
        return np.stack(found)

    def put(self, template: str, names: Sequence[str], embeddings: np.ndarray) -> None:
        """Add (K, D) ``embeddings`` of ``names`` and write the file; an unwritable folder is logged."""
        embeddings = np.asarray(embeddings, np.float32)
        with self._lock:
            rows = self._loaded()
            if all((template, n) in rows for n in names):
                return
            for n, e in zip(names, embeddings):
                rows.pop((template, n), None)
                rows[(template, n)] = e                          # newest last: the oldest are dropped first
            while len(rows) > self.max_entries:
                rows.pop(next(iter(rows)))
            keys = list(rows)
            try:
                write_rows(self.path, keys, np.stack([rows[k] for k in keys]))
            except OSError as err:
                log.warning("text embedding store %s not written (%s): the text is encoded again next start",
                            self.path, err)


def write_rows(path: Path, keys: Sequence[tuple[str, str]], embeddings: np.ndarray) -> None:
    """Write (P, D) float32 ``embeddings`` of the (template, name) ``keys`` as a store file (atomically)."""
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings}, tmp, metadata={
            "prompts": json.dumps([list(k) for k in keys]),
            "sha256": hashlib.sha256(embeddings.tobytes()).hexdigest()})


def _read_rows(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """The rows of a store file; {} with a warning when it is unreadable or fails its checksum."""
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            values = f.get_tensor("embeddings")
        keys = json.loads(meta.get("prompts", "[]"))
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} prompts for {len(values)} rows")
        if hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest() != meta.get("sha256"):
            raise ValueError("the embeddings do not match their sha256")
        return {(t, n): v for (t, n), v in zip(keys, values)}
    except Exception as err:   # a damaged file is never trusted: its text is encoded again
        log.warning("text embedding store %s unreadable (%s: %s): not used", path, type(err).__name__, err)
        return {}


@contextlib.contextmanager
def _collection_paused():
    """No cyclic garbage collection inside the block; after it, every object so far is moved out of the
    collector's sight (``gc.freeze``: the modules and models, which live as long as the process) and the
    previous state is restored. Importing open_clip allocates enough to set off full collections over every
    object torch made, each holding the GIL for 0.1-0.2 s: loading CLIP beside a running executor stalled it
    by 170-200 ms at a time, 31-45 ms with collection paused (measured on 2 cores); the freeze keeps the
    first collection after the load from paying the same."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class TextEncoder:
    """Unit-norm text embeddings of vocabularies: from the store when it holds every prompt, else from
    CLIP (:meth:`ClipModel.encode_text`), then stored. CLIP is loaded by ``load_clip`` once, on first
    need or by :meth:`preload`; a failed load is raised to every caller that needs CLIP.

    Args:
        load_clip: makes the ClipModel (or a loaded ClipModel).
        embed_dim: D, known without loading (the open_clip config); a loaded ClipModel's by default.
        store: the on-disk store (None: none, every vocabulary goes to CLIP once per process).
    """

    def __init__(self, load_clip: Callable[[], ClipModel] | ClipModel, embed_dim: int | None = None,
                 store: TextEmbeddingStore | None = None):
        self._clip = load_clip if isinstance(load_clip, ClipModel) else None
        self._load_clip = None if self._clip is not None else load_clip
        self._load_error: BaseException | None = None
        self._loading = False
        self._clip_lock = threading.Lock()
        if embed_dim is None:
            if self._clip is None:
                raise ValueError("embed_dim is needed when CLIP is loaded later")
            embed_dim = self._clip.embed_dim
        self.embed_dim = int(embed_dim)
        self.store = store
        self._last: tuple[tuple, torch.Tensor] | None = None

    @property
    def loaded(self) -> bool:
        """Whether CLIP is in memory."""
        return self._clip is not None

    @property
    def loading(self) -> bool:
        """Whether a thread is loading CLIP now (seconds, mostly importing open_clip; it cannot be interrupted)."""
        return self._loading

    @property
    def clip(self) -> ClipModel:
        """The ClipModel, loaded now when it is not yet (blocking; one load, whatever the threads)."""
        with self._clip_lock:
            if self._clip is None:
                if self._load_error is not None:
                    raise RuntimeError(f"CLIP failed to load: {self._load_error}") from self._load_error
                self._loading = True
                try:
                    with _collection_paused():
                        clip = self._load_clip()
                except Exception as err:
                    self._load_error = err
                    raise
                finally:
                    self._loading = False
                if clip.embed_dim != self.embed_dim:
                    self._load_error = ValueError(f"CLIP embeds into {clip.embed_dim}-d, expected {self.embed_dim}")
                    raise self._load_error
                self._clip = clip
            return self._clip

    def can_encode_now(self, names: Sequence[str], template: str) -> bool:
        """Whether :meth:`encode` of these names has its answer without loading CLIP: CLIP is loaded, they are
        the last vocabulary encoded, or the store holds every prompt."""
        return self.loaded or self._known((template, tuple(names)), self.store) is not None

    def _known(self, key: tuple[str, tuple[str, ...]], store: TextEmbeddingStore | None) -> torch.Tensor | None:
        """The embeddings of ``key`` (template, names) without CLIP: the last vocabulary's, or ``store``'s."""
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        stored = store.get(*key) if store is not None else None
        return None if stored is None else torch.from_numpy(stored)

    def preload(self) -> threading.Thread | None:
        """Load CLIP on a daemon thread (None when it is loaded); a failure is logged and kept for later.
        The thread's torch work runs on one thread: no second OpenMP team beside a worker's
        (:mod:`folk_ros.core.torch_threads`)."""
        if self.loaded:
            return None

        def load():
            try:
                torch_threads.use_threads(1)
                self.clip
            except Exception as err:
                log.error("CLIP failed to load in the background: %s: %s", type(err).__name__, err)

        thread = threading.Thread(target=load, name="clip-preload", daemon=True)
        thread.start()
        return thread

    def encode(self, names: Sequence[str], template: str, keep: bool = True) -> torch.Tensor:
        """(K, D) float32 unit-norm embeddings of ``template`` filled with each name (CPU). ``keep``: look the
        names up in the store and add them to it (False for one-off text, e.g. a map query's phrases)."""
        key = (template, tuple(names))
        store = self.store if keep else None
        text = self._known(key, store)
        if text is None:
            text = self.clip.encode_text(list(key[1]), template).float().cpu()
            if store is not None:
                store.put(template, key[1], text.numpy())
        self._last = (key, text)
        return text.clone()
