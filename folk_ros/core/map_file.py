"""The live map's file: a versioned safetensors file of :meth:`InstanceMap.state`'s arrays with a JSON
header, written atomically, never pickle (nothing in it is executed on load)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from folk_ros.core.atomic import write_bytes_atomic
from folk_ros.core.instance_map import InstanceMap
from folk_ros.core.map_config import MapConfig

FORMAT = "folk_ros.instance_map"
VERSION = 1
_PLAIN = ("embedding_space",)     # header values stored as plain strings; the others as JSON


class MapFileError(ValueError):
    """A map file that cannot be loaded: corrupt, foreign, another version or another model's."""


def save_map(imap: InstanceMap, path: str | os.PathLike) -> Path:
    """Write ``imap`` to ``path`` atomically: a kill during the write leaves the previous file readable."""
    arrays, header = imap.state()
    meta = {"format": FORMAT, "version": str(VERSION),
            **{k: v if k in _PLAIN else json.dumps(v) for k, v in header.items()}}
    return write_bytes_atomic(path, save(arrays, metadata=meta))


def load_map(path: str | os.PathLike, embedding_space: str | None = None,
             cfg: MapConfig | None = None) -> InstanceMap:
    """Read a map written by :func:`save_map`; MapFileError says what is wrong (missing, corrupt, foreign,
    another version, or another model's embeddings when ``embedding_space`` is given). ``cfg`` replaces
    the settings saved with it (the voxel grid stays the saved one)."""
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"no map file at {path}")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise MapFileError(f"{path} is not a readable map file ({err})") from None
    if meta.get("format") != FORMAT:
        raise MapFileError(f"{path} is not a folk_ros map (format {meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise MapFileError(f"{path} is map format version {meta.get('version')}; this folk_ros reads "
                           f"version {VERSION}")
    try:
        meta.setdefault("frame_origin", "null")            # written since the UTM recentring
        header = {k: v if k in _PLAIN else json.loads(v) for k, v in meta.items() if k not in ("format", "version")}
        space = header["embedding_space"]
        if embedding_space is not None and space != embedding_space:
            raise MapFileError(f"the map was built with another model's embeddings ({space[:12]}...), not "
                               f"this student's ({embedding_space[:12]}...): reset it or load the matching model")
        return InstanceMap.from_state(arrays, header, cfg)
    except MapFileError:
        raise
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise MapFileError(f"{path} is a damaged map file: {err}") from None
