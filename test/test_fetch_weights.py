"""training.fetch_weights against a local HTTP server (no internet here): resumed, verified and converted downloads.

The served models are our own test doubles (a random Mask3D-small, the tiny random CLIP); the real sources are
the same code path with other URLs.
"""

import argparse
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from folk_ros.core.clip import ClipModel
from folk_ros.core.mask3d.checkpoint import load_checkpoint, save_checkpoint
from folk_ros.core.mask3d.config import preset
from folk_ros.core.mask3d.model import Mask3D
from training.fetch_weights import FetchError, download, main


class Files(http.server.BaseHTTPRequestHandler):
    """GET over ``server.root``: Range requests (unless ``server.ranges`` is False), and a cut: the first answer
    for a path in ``server.cut`` announces the whole file but sends only that many bytes."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        asked = self.headers.get("Range")
        if asked and self.server.ranges:
            start = int(asked.split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.server.cut.pop(self.path, None)
        self.wfile.write(data[start:start + cut] if cut is not None else data[start:])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.root, httpd.requests, httpd.cut, httpd.ranges = tmp_path / "served", [], {}, True
    httpd.root.mkdir()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve(server, name: str, data: bytes) -> str:
    (server.root / name).parent.mkdir(parents=True, exist_ok=True)
    (server.root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_download_checks_the_hash_and_does_not_fetch_twice(server, tmp_path):
    data = np.random.default_rng(0).bytes(300_000)
    digest = _serve(server, "w.bin", data)
    got = download(f"{server.url}/w.bin", tmp_path / "d" / "w.bin", digest, progress=False)
    assert got.sha256 == digest and got.path.read_bytes() == data
    assert download(f"{server.url}/w.bin", got.path, digest, progress=False).sha256 == digest
    assert len(server.requests) == 1                        # the file already there is only hashed
    with pytest.raises(FetchError, match="differs from the pinned"):
        download(f"{server.url}/w.bin", tmp_path / "e" / "w.bin", "0" * 64, progress=False)
    assert list((tmp_path / "e").iterdir()) == []           # neither the file nor a part is left


@pytest.mark.parametrize("ranges", [True, False])
def test_a_cut_download_resumes(server, tmp_path, ranges):
    """The first answer stops after 100,000 bytes: one clear error, the part kept; the next run asks for the
    rest (Range) and the file is whole; a server without ranges sends it all again, which is whole too."""
    data = np.random.default_rng(1).bytes(300_000)
    digest = _serve(server, "w.bin", data)
    server.cut["/w.bin"], server.ranges = 100_000, ranges
    dest = tmp_path / "w.bin"
    with pytest.raises(FetchError, match="stopped at 100,000 of 300,000 bytes"):
        download(f"{server.url}/w.bin", dest, digest, progress=False)
    assert (tmp_path / "w.bin.part").stat().st_size == 100_000 and not dest.exists()
    assert download(f"{server.url}/w.bin", dest, digest, progress=False).sha256 == digest
    assert dest.read_bytes() == data and not (tmp_path / "w.bin.part").exists()
    assert server.requests[-1] == ("/w.bin", "bytes=100000-")


def test_http_errors_and_offline_are_one_line(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "m.bin", progress=False)
    closed = http.server.HTTPServer(("127.0.0.1", 0), Files)
    port = closed.server_address[1]
    closed.server_close()                                   # nothing listens there now
    with pytest.raises(FetchError, match=r"offline\? .* copy it to .*m\.bin"):
        download(f"http://127.0.0.1:{port}/m.bin", tmp_path / "m.bin", timeout=5, progress=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    mask3d = Mask3D(preset("small"))
    save_checkpoint(root / "ours.pt", mask3d)
    # the official file's shape: Lightning's {"state_dict": {"model." + key}} plus pickled settings
    torch.save({"state_dict": {f"model.{k}": v for k, v in mask3d.state_dict().items()},
                "hyper_parameters": argparse.Namespace(lr=1e-4)}, root / "lightning.ckpt")
    clip = ClipModel.from_config("folk-tiny-vit", device="cpu", seed=0)
    clip.save(root / "clip")
    return root, mask3d, clip


def test_cli_fetches_checks_and_converts_both_models(server, models, tmp_path, capsys):
    root, mask3d, clip = models
    digest = _serve(server, "ckpt/ours.pt", (root / "ours.pt").read_bytes())
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        _serve(server, f"clip/{name}", (root / "clip" / name).read_bytes())
    out = tmp_path / "weights"
    args = ["--out", str(out), "--mask3d-url", f"{server.url}/ckpt/ours.pt", "--clip-base-url",
            f"{server.url}/clip", "--quiet"]
    assert main([*args, "--sha256", f"ours.pt={digest}"]) == 0
    printed = capsys.readouterr().out
    assert "every key matched" in printed and digest in printed
    model, report = load_checkpoint(out / "mask3d_scannet200.pt")
    assert report.ok and all(torch.equal(v, mask3d.state_dict()[k]) for k, v in model.state_dict().items())
    again = ClipModel(f"local-dir:{out / 'clip'}", device="cpu")
    assert torch.equal(again.encode_text(["mug"], "a {}"), clip.encode_text(["mug"], "a {}"))
    served = {"/ckpt/ours.pt", "/clip/open_clip_config.json", "/clip/open_clip_model.safetensors"}
    assert {p for p, _ in server.requests} == served
    assert main([*args, "--sha256", "ours.pt=" + "1" * 64, "--only", "mask3d"]) == 1       # a wrong pin
    assert "differs from the pinned" in capsys.readouterr().err


def test_cli_official_format_needs_trust_and_wrong_weights_are_refused(server, models, tmp_path, capsys):
    root, mask3d, _ = models
    _serve(server, "lightning.ckpt", (root / "lightning.ckpt").read_bytes())
    args = ["--out", str(tmp_path / "w"), "--only", "mask3d", "--mask3d-url", f"{server.url}/lightning.ckpt",
            "--mask3d-preset", "small", "--quiet"]
    assert main(args) == 1
    assert "--allow-unsafe-checkpoint" in capsys.readouterr().err
    assert main([*args, "--allow-unsafe-checkpoint"]) == 0
    model, _ = load_checkpoint(tmp_path / "w" / "mask3d_scannet200.pt")    # weights only now: loads safely
    assert all(torch.equal(v, mask3d.state_dict()[k]) for k, v in model.state_dict().items())
    torch.save({"weight": torch.zeros(3)}, root / "other.pt")
    _serve(server, "other.pt", (root / "other.pt").read_bytes())
    assert main(["--out", str(tmp_path / "x"), "--only", "mask3d", "--mask3d-url", f"{server.url}/other.pt",
                 "--quiet"]) == 1
    assert "is not a Mask3D checkpoint" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "y"), "--only", "clip", "--clip-base-url", f"{server.url}/nothing",
                 "--quiet"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert not (tmp_path / "y" / "clip").exists()


def test_default_sources_are_the_official_ones():
    from training.fetch_weights import MASK3D_URL, clip_urls
    assert MASK3D_URL.endswith("/mask3d/checkpoints/scannet200/scannet200_val.ckpt")
    config, weights = clip_urls()          # open_clip's own record of where ViT-L-14-336 (OpenAI) lives
    assert config == "https://huggingface.co/timm/vit_large_patch14_clip_336.openai/resolve/main/open_clip_config.json"
    assert [w.rsplit("/", 1)[1] for w in weights] == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
