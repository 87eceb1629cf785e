"""Staging of torchvision files: checksums, no network when staged, clear errors offline or when corrupt.

Generated files cannot match the official MD5s, so the tests pass their own file table (``files=``); the
downloads that do happen go through torchvision's real download code to a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from embedscope.download import (
    DATASET_FILES,
    StagedFile,
    StagingError,
    stage_dataset,
    staged_paths,
    verify_inputs,
    verify_staged,
)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _closed_port_url(name: str) -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/{name}"


@pytest.fixture
def server():
    """A local HTTP server serving {path: bytes}; records every request path."""
    content, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requests.append(self.path)
            body = content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, content, requests
    httpd.shutdown()
    httpd.server_close()


def _table(base: str, blobs: dict[str, bytes]):
    return [StagedFile(rel, _md5(data), (f"{base}/{rel.rsplit('/', 1)[-1]}",)) for rel, data in blobs.items()]


BLOBS = {"TOY/raw/a.gz": b"first file" * 100, "TOY/raw/b.gz": b"second file" * 50}


def test_table_is_torchvisions():
    from torchvision.datasets import CIFAR10, MNIST

    mnist = DATASET_FILES["MNIST"]
    assert [(f.filename, f.md5) for f in mnist] == [tuple(r) for r in MNIST.resources]
    assert all(f.relpath == f"MNIST/raw/{f.filename}" for f in mnist)
    assert [list(f.urls) for f in mnist] == [[m + f.filename for m in MNIST.mirrors] for f in mnist]
    (cifar,) = DATASET_FILES["CIFAR10"]
    assert (cifar.relpath, cifar.md5, cifar.urls) == (CIFAR10.filename, CIFAR10.tgz_md5, (CIFAR10.url,))
    assert cifar.md5 == "c58f30108f718f92721af3b95e74349a"


def test_preplaced_files_are_used_without_network(tmp_path, server):
    base, content, requests = server
    files = _table(base, BLOBS)
    for rel, data in BLOBS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    before = {rel: (tmp_path / rel).stat().st_mtime_ns for rel in BLOBS}
    assert stage_dataset("TOY", tmp_path, files=files, timeout=2) == {rel: "present" for rel in BLOBS}
    assert requests == []
    assert {rel: (tmp_path / rel).stat().st_mtime_ns for rel in BLOBS} == before
    assert verify_staged("TOY", tmp_path, files=files) == {f.relpath: f.md5 for f in files}


def test_missing_file_is_downloaded_verified_and_renamed(tmp_path, server):
    base, content, requests = server
    files = _table(base, BLOBS)
    content.update({"/a.gz": BLOBS["TOY/raw/a.gz"], "/b.gz": BLOBS["TOY/raw/b.gz"]})
    (tmp_path / "TOY/raw").mkdir(parents=True)
    (tmp_path / "TOY/raw/a.gz").write_bytes(BLOBS["TOY/raw/a.gz"])
    result = stage_dataset("TOY", tmp_path, files=files, timeout=2)
    assert result == {"TOY/raw/a.gz": "present", "TOY/raw/b.gz": "downloaded"}
    assert (tmp_path / "TOY/raw/b.gz").read_bytes() == BLOBS["TOY/raw/b.gz"]
    assert all(r == "/b.gz" for r in requests) and requests
    assert sorted(p.name for p in (tmp_path / "TOY/raw").iterdir()) == ["a.gz", "b.gz"]  # no temp left
    requests.clear()
    stage_dataset("TOY", tmp_path, files=files, timeout=2)
    assert requests == []


def test_download_with_wrong_content_leaves_nothing(tmp_path, server):
    base, content, requests = server
    files = _table(base, BLOBS)
    content.update({"/a.gz": b"truncated", "/b.gz": BLOBS["TOY/raw/b.gz"]})
    with pytest.raises(StagingError, match=r"(?s)could not download 1 file.*TOY/raw/a\.gz") as err:
        stage_dataset("TOY", tmp_path, files=files, timeout=2)
    assert not (tmp_path / "TOY/raw/a.gz").exists()
    assert (tmp_path / "TOY/raw/b.gz").read_bytes() == BLOBS["TOY/raw/b.gz"]
    assert sorted(p.name for p in (tmp_path / "TOY/raw").iterdir()) == ["b.gz"]
    assert _md5(BLOBS["TOY/raw/a.gz"]) in str(err.value)


def test_corrupt_file_is_named_and_left_alone(tmp_path, server):
    base, content, requests = server
    files = _table(base, BLOBS)
    for rel, data in BLOBS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    partial = BLOBS["TOY/raw/b.gz"][:100]
    (tmp_path / "TOY/raw/b.gz").write_bytes(partial)
    expected = rf"(?s)wrong MD5.*TOY/raw/b\.gz: MD5 is {_md5(partial)}, expected {_md5(BLOBS['TOY/raw/b.gz'])}"
    with pytest.raises(StagingError, match=expected) as err:
        stage_dataset("TOY", tmp_path, files=files, timeout=2)
    assert "a.gz" not in str(err.value)
    assert (tmp_path / "TOY/raw/b.gz").read_bytes() == partial
    assert requests == []
    with pytest.raises(StagingError, match=expected):
        verify_staged("TOY", tmp_path, files=files)


def test_offline_error_says_which_files_to_put_where(tmp_path):
    files = [StagedFile(rel, _md5(data), (_closed_port_url(rel),)) for rel, data in BLOBS.items()]
    with pytest.raises(StagingError) as err:
        stage_dataset("TOY", tmp_path, files=files, only=["TOY/raw/a.gz"], timeout=2)
    message = str(err.value)
    assert "URLError" in message and "no network" in message
    for f in files:  # every missing file of the dataset, not only this job's, with its MD5
        assert f"{tmp_path / f.relpath}  md5 {f.md5}" in message
    assert not (tmp_path / "TOY/raw").exists() or not any((tmp_path / "TOY/raw").iterdir())
    with pytest.raises(StagingError, match=r"(?s)2 file\(s\) of TOY are missing.*snakemake download"):
        verify_staged("TOY", tmp_path, files=files)
    assert socket.getdefaulttimeout() is None  # restored


def test_real_table_offline_or_online(tmp_path):
    """The official URLs through torchvision: offline -> the error names the official file and MD5; with a
    network the (28 kB) file arrives verified. Cannot hang: a 3 s socket timeout."""
    rel = "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    try:
        result = stage_dataset("MNIST", tmp_path, only=[rel], timeout=3)
    except StagingError as exc:
        message = str(exc)
        for path in staged_paths("MNIST", tmp_path):
            assert path in message
        assert "ec29112dd5afa0611ce80d1b7f02629c" in message
        assert not (tmp_path / rel).exists()
    else:
        assert result == {rel: "downloaded"}
        verify_inputs([tmp_path / rel])


def test_unknown_names():
    with pytest.raises(StagingError, match="expected one of"):
        stage_dataset("SVHN", "x")
    with pytest.raises(StagingError, match="not files of MNIST"):
        stage_dataset("MNIST", "x", only=["nope.gz"])


def test_verify_inputs_checks_weights_hash_prefix(tmp_path):
    data = b"weights"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    good = tmp_path / f"resnet18-{prefix}.pth"
    good.write_bytes(data)
    bad = tmp_path / "resnet18-f37072fd.pth"
    bad.write_bytes(b"partial")
    mnist = tmp_path / "datasets/MNIST/raw/t10k-labels-idx1-ubyte.gz"
    mnist.parent.mkdir(parents=True)
    mnist.write_bytes(b"x")
    assert verify_inputs([good])[str(good)].startswith("ok sha256")
    with pytest.raises(StagingError) as err:
        verify_inputs([good, bad, mnist, tmp_path / "missing.gz"])
    message = str(err.value)
    assert "resnet18-f37072fd.pth: SHA-256" in message and "start with f37072fd" in message
    assert f"{mnist}: MD5 is {_md5(b'x')}, expected ec29112dd5afa0611ce80d1b7f02629c" in message
    assert "missing.gz: missing" in message and str(good) not in message


def test_verify_staged_not_strict_for_own_files(tmp_path):
    files = [StagedFile(rel, _md5(data)) for rel, data in BLOBS.items()]
    (tmp_path / "TOY/raw").mkdir(parents=True)
    (tmp_path / "TOY/raw/a.gz").write_bytes(b"own a")
    (tmp_path / "TOY/raw/b.gz").write_bytes(BLOBS["TOY/raw/b.gz"])
    found = verify_staged("TOY", tmp_path, files=files, strict=False)
    assert found == {"TOY/raw/a.gz": _md5(b"own a"), "TOY/raw/b.gz": _md5(BLOBS["TOY/raw/b.gz"])}
    (tmp_path / "TOY/raw/b.gz").unlink()
    with pytest.raises(StagingError, match=r"1 file\(s\) of TOY are missing"):
        verify_staged("TOY", tmp_path, files=files, strict=False)


@pytest.mark.e2e
def test_download_target_offline_and_corrupt(tmp_path):
    """`snakemake download` through the real rules: offline with nothing staged -> the error lists every file
    with its MD5 and place; pre-placed files with wrong MD5s -> named by the download target's check."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from embedscope.synthetic import write_mnist_raw

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "repo"
    shutil.copytree(repo, work, ignore=shutil.ignore_patterns(
        ".venv", "venv", ".git", "results", "resources", ".snakemake", "__pycache__", "tests", "bench"))
    (work / "m.yaml").write_text("datasets:\n  m:\n    source: torchvision\n    name: MNIST\n"
                                 "resnet18:\n  weights: random\ndevice: cpu\n")
    cmd = [str(Path(sys.executable).with_name("snakemake")), "download", "--cores", "1", "--configfile", "m.yaml"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]

    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for f in DATASET_FILES["MNIST"]:
        assert f"resources/datasets/{f.relpath}  md5 {f.md5}" in output, output[-3000:]
    assert not (work / "resources/datasets/MNIST/raw").exists() or not any(
        (work / "resources/datasets/MNIST/raw").iterdir())

    write_mnist_raw(work / "resources/datasets", n_train=20, n_test=10)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for f in DATASET_FILES["MNIST"]:
        got = _md5((work / "resources/datasets" / f.relpath).read_bytes())
        assert f"resources/datasets/{f.relpath}: MD5 is {got}, expected {f.md5}" in output, output[-3000:]
