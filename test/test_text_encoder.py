"""The text side of the runtime: the on-disk text embedding store and CLIP loaded only when a name needs it.

CLIP here is the tiny random ``folk-tiny-vit`` (a test double: real open_clip code, random weights).
"""

import gc
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from folk_ros.core.clip import ClipModel
from folk_ros.core.segmenter import Segmenter
from folk_ros.core.text_encoder import TextEmbeddingStore, TextEncoder, source_key, write_rows
from test.fixtures import make_untrained_bundle

NAMES = ("mug", "chair", "fire extinguisher")
TEMPLATE = "a {} in the scene"


@pytest.fixture(scope="module")
def clip():
    return ClipModel.from_config("folk-tiny-vit", device="cpu")


class CountingLoader:
    """Hands out ``clip`` and counts the loads (optionally failing)."""

    def __init__(self, clip, error=None):
        self.clip, self.error, self.calls = clip, error, 0

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.clip


def test_store_round_trip_across_instances_and_eviction(tmp_path):
    store = TextEmbeddingStore(tmp_path, "key")
    assert store.get(TEMPLATE, NAMES) is None and not store.path.exists()
    rows = np.random.default_rng(0).random((3, 8)).astype(np.float32)
    store.put(TEMPLATE, NAMES, rows)
    again = TextEmbeddingStore(tmp_path, "key")                # a new process reads the file
    np.testing.assert_array_equal(again.get(TEMPLATE, NAMES[::-1]), rows[::-1])
    assert again.get("a photo of a {}", NAMES) is None         # the template is part of the key
    assert again.get(TEMPLATE, [*NAMES, "lamp"]) is None       # one missing name: no answer
    assert TextEmbeddingStore(tmp_path, "other").get(TEMPLATE, NAMES) is None   # another CLIP, another file
    small = TextEmbeddingStore(tmp_path, "small", max_entries=2)
    small.put(TEMPLATE, NAMES, rows)                           # the oldest prompt goes
    assert TextEmbeddingStore(tmp_path, "small").get(TEMPLATE, NAMES[:1]) is None
    np.testing.assert_array_equal(TextEmbeddingStore(tmp_path, "small").get(TEMPLATE, NAMES[1:]), rows[1:])
    with pytest.raises(ValueError, match="model_key"):
        TextEmbeddingStore(tmp_path, "../escape")


def test_a_damaged_store_is_started_anew_and_an_unwritable_one_only_logged(tmp_path, caplog):
    store = TextEmbeddingStore(tmp_path, "key")
    store.path.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        assert store.get(TEMPLATE, NAMES) is None
        assert "unreadable" in caplog.text
        store.put(TEMPLATE, NAMES, np.ones((3, 4)))
    assert TextEmbeddingStore(tmp_path, "key").get(TEMPLATE, NAMES).shape == (3, 4)
    (tmp_path / "file").write_text("")
    blocked = TextEmbeddingStore(tmp_path / "file" / "below", "key")   # its folder cannot be made
    with caplog.at_level(logging.WARNING):
        blocked.put(TEMPLATE, NAMES, np.ones((3, 4)))
    assert "not written" in caplog.text


def test_seeds_are_read_but_never_written_and_a_bad_checksum_is_refused(tmp_path, caplog):
    rows = np.random.default_rng(1).random((3, 4)).astype(np.float32)
    write_rows(tmp_path / "seed" / "key.safetensors", [(TEMPLATE, n) for n in NAMES], rows)
    store = TextEmbeddingStore(tmp_path / "own", "key", seeds=[tmp_path / "seed"])
    np.testing.assert_array_equal(store.get(TEMPLATE, NAMES), rows)
    store.put(TEMPLATE, ["lamp"], np.ones((1, 4)))
    assert TextEmbeddingStore(tmp_path / "seed", "key").get(TEMPLATE, ["lamp"]) is None   # the seed is unchanged
    assert TextEmbeddingStore(tmp_path / "own", "key").get(TEMPLATE, [*NAMES, "lamp"]) is not None
    data = bytearray((tmp_path / "seed" / "key.safetensors").read_bytes())
    data[-1] ^= 0xFF                                           # one flipped bit of the last embedding
    (tmp_path / "seed" / "key.safetensors").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert TextEmbeddingStore(tmp_path / "seed", "key").get(TEMPLATE, NAMES) is None
    assert "sha256" in caplog.text


def test_the_shipped_bundle_text_is_its_clips(tmp_path):
    """models/folk-synth/text_cache holds what the bundle's CLIP gives for its vocabulary (so the node's
    default vocabulary starts without CLIP)."""
    lazy = Segmenter.from_bundle(Path(__file__).parents[1] / "models" / "folk-synth", device="cpu", text_store=tmp_path)
    names = ("chair", "table", "couch", "plant")
    got = lazy.text_embeddings(names)
    assert not lazy.text.loaded
    torch.testing.assert_close(got, lazy.clip.encode_text(list(names), lazy.cfg.prompt_template))


def test_source_key_follows_the_files(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"1234")
    key = source_key(tmp_path)
    assert key == source_key(tmp_path) and len(key) == 64
    (tmp_path / "w.bin").write_bytes(b"12345")
    assert source_key(tmp_path) != key


def test_encoder_reads_the_store_without_loading_clip(tmp_path, clip):
    want = clip.encode_text(list(NAMES), TEMPLATE)
    first = TextEncoder(CountingLoader(clip), clip.embed_dim, TextEmbeddingStore(tmp_path, "k"))
    torch.testing.assert_close(first.encode(NAMES, TEMPLATE), want)
    assert first.loaded and first._load_clip.calls == 1
    loader = CountingLoader(clip)
    second = TextEncoder(loader, clip.embed_dim, TextEmbeddingStore(tmp_path, "k"))   # the next start
    assert second.can_encode_now(NAMES[:2], TEMPLATE) and not second.can_encode_now(["lamp"], TEMPLATE)
    assert not second.can_encode_now(NAMES[:2], "a photo of a {}")       # the store is keyed by the prompt
    assert not TextEncoder(loader, clip.embed_dim).can_encode_now(NAMES, TEMPLATE)   # no store, no CLIP yet
    got = second.encode(list(NAMES[:2]), TEMPLATE)
    torch.testing.assert_close(got, want[:2])
    got.zero_()                                                # a caller's tensor is its own
    torch.testing.assert_close(second.encode(NAMES[:2], TEMPLATE), want[:2])
    assert not second.loaded and loader.calls == 0
    new = second.encode(["lamp"], TEMPLATE)                    # a new name needs CLIP: loaded once
    torch.testing.assert_close(new, clip.encode_text(["lamp"], TEMPLATE))
    second.encode(["desk"], TEMPLATE)
    assert second.loaded and loader.calls == 1 and second.can_encode_now(["anything"], "{}")   # CLIP is here
    assert TextEmbeddingStore(tmp_path, "k").get(TEMPLATE, ["lamp", "desk", *NAMES]) is not None
    phrase = second.encode(["a red mug"], "{}", keep=False)   # one-off text: encoded, not kept
    torch.testing.assert_close(phrase, clip.encode_text(["a red mug"], "{}"))
    assert TextEmbeddingStore(tmp_path, "k").get("{}", ["a red mug"]) is None


def test_garbage_collection_is_paused_only_while_clip_loads(clip):
    seen = []

    def loader():
        seen.append(gc.isenabled())
        return clip

    assert gc.isenabled()
    TextEncoder(loader, clip.embed_dim).clip
    assert seen == [False] and gc.isenabled()
    with pytest.raises(OSError):
        TextEncoder(CountingLoader(clip, OSError("no weights")), clip.embed_dim).clip
    assert gc.isenabled()


def test_preload_and_a_failed_load(clip):
    loader = CountingLoader(clip)
    encoder = TextEncoder(loader, clip.embed_dim)
    thread = encoder.preload()
    assert isinstance(thread, threading.Thread)
    thread.join(timeout=60)
    assert encoder.loaded and loader.calls == 1 and encoder.preload() is None
    broken = TextEncoder(CountingLoader(clip, OSError("weights unreadable")), clip.embed_dim)
    broken.preload().join(timeout=60)                           # logged, kept for whoever needs CLIP
    with pytest.raises(RuntimeError, match="weights unreadable"):
        broken.encode(NAMES, TEMPLATE)
    assert TextEncoder(clip).embed_dim == clip.embed_dim          # a loaded CLIP names its size
    with pytest.raises(ValueError, match="embed_dim"):
        TextEncoder(CountingLoader(clip))                          # one loaded later cannot
    wrong = TextEncoder(CountingLoader(clip), clip.embed_dim + 1)
    with pytest.raises(ValueError, match="expected"):
        wrong.encode(NAMES, TEMPLATE)


def test_loading_is_true_only_while_a_thread_loads_clip(clip):
    started, release = threading.Event(), threading.Event()

    def slow_loader():
        started.set()
        release.wait(timeout=60)
        return clip

    encoder = TextEncoder(slow_loader, clip.embed_dim)
    assert not encoder.loading
    thread = encoder.preload()
    assert started.wait(timeout=60) and encoder.loading and not encoder.loaded   # what shutdown asks
    release.set()
    thread.join(timeout=60)
    assert encoder.loaded and not encoder.loading
    broken = TextEncoder(CountingLoader(clip, OSError("no weights")), clip.embed_dim)
    with pytest.raises(OSError):
        broken.clip
    assert not broken.loading


def test_segmenter_from_bundle_with_a_store_loads_clip_only_for_new_text(tmp_path):
    bundle = make_untrained_bundle(tmp_path / "bundle")
    eager = Segmenter.from_bundle(bundle, device="cpu")
    assert eager.text.loaded and eager.text.store is None
    lazy = Segmenter.from_bundle(bundle, device="cpu", text_store=tmp_path / "text")
    assert not lazy.text.loaded
    torch.testing.assert_close(lazy.text_embeddings(NAMES), eager.text_embeddings(NAMES))
    assert lazy.text.loaded
    restarted = Segmenter.from_bundle(bundle, device="cpu", text_store=tmp_path / "text")
    torch.testing.assert_close(restarted.text_embeddings(NAMES), eager.text_embeddings(NAMES))
    assert not restarted.text.loaded
    assert restarted.clip.embed_dim == eager.clip.embed_dim and restarted.text.loaded   # .clip loads it
