"""download-coco against a local HTTP server that supports Range requests (no internet)."""

import argparse
import hashlib
import io
import json
import re
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from elastic_lab.download import (
    OFFICIAL_FILES,
    ChecksumError,
    DownloadError,
    add_arguments,
    coco_layout,
    download_coco,
    download_file,
    run,
)

IMAGES = "/zips/val2017.zip"
ANNOTATIONS = "/annotations/annotations_trainval2017.zip"
ANNOTATION_JSON = {
    "images": [
        {"id": i, "file_name": f"{i:012d}.jpg", "width": 16, "height": 12} for i in (1, 2, 3)
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 5, 4], "area": 20.0, "iscrowd": 0}
    ],
    "categories": [{"id": 7, "name": "ring"}],
}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (40 * i, 10, 200)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    # padding makes the archive big enough for several read chunks and a mid-file resume
    images = _zip(
        {
            "val2017/": b"",
            **{f"val2017/{i:012d}.jpg": _jpeg(i) for i in (1, 2, 3)},
            "val2017/padding.bin": bytes(range(256)) * 12_000,
        }
    )
    annotations = _zip(
        {
            "annotations/instances_val2017.json": json.dumps(ANNOTATION_JSON).encode(),
            "annotations/instances_train2017.json": b'{"images": []}',
        }
    )
    return {IMAGES: images, ANNOTATIONS: annotations}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FileServer:
    """Serves ``files`` on 127.0.0.1; records (path, Range header) of every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.drop_first_after: int | None = None  # close the first response after N bytes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and server.honour_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_first_after is not None:
                    body, server.drop_first_after = body[: server.drop_first_after], None
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up early (e.g. wrong size): expected in some tests

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archives):
    srv = FileServer(archives)
    yield srv
    srv.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checksums(archives):
    return {
        "val2017.zip": _md5(archives[IMAGES]),
        "annotations_trainval2017.zip": _md5(archives[ANNOTATIONS]),
    }


def test_download_and_layout(tmp_path, server, archives):
    root = tmp_path / "coco"
    layout = download_coco(root, "val2017", base_url=server.url, checksums=_checksums(archives))
    assert layout == coco_layout(root, "val2017")
    assert layout.images_dir == root / "images" / "val2017"
    assert layout.annotation_file == root / "annotations" / "instances_val2017.json"
    jpgs = sorted(p.name for p in layout.images_dir.glob("*.jpg"))
    assert jpgs == ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"]
    with Image.open(layout.images_dir / jpgs[1]) as im:
        assert im.size == (16, 12)
    assert json.loads(layout.annotation_file.read_text()) == ANNOTATION_JSON
    assert sorted(server.requests) == [(ANNOTATIONS, None), (IMAGES, None)]
    leftovers = [p.name for p in (root / "downloads").iterdir() if not p.name.endswith(".unpacked")]
    assert leftovers == [], "archives and .part files are removed after unpacking"
    # a second run finds everything unpacked and does not touch the network
    download_coco(root, "val2017", base_url=server.url, checksums=_checksums(archives))
    assert len(server.requests) == 2


def test_resume_with_range(tmp_path, server, archives):
    data = archives[IMAGES]
    half = len(data) // 2
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "val2017.zip.part").write_bytes(data[:half])
    download_coco(
        tmp_path,
        "val2017",
        base_url=server.url,
        annotations=False,
        keep_archives=True,
        checksums={"val2017.zip": _md5(data)},
    )
    assert server.requests == [(IMAGES, f"bytes={half}-")]
    assert (downloads / "val2017.zip").read_bytes() == data
    assert not (downloads / "val2017.zip.part").exists()
    assert len(list((tmp_path / "images" / "val2017").glob("*.jpg"))) == 3


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, archives):
    data = archives[IMAGES]
    server.honour_range = False
    part = tmp_path / "val2017.zip.part"
    part.write_bytes(b"\xff" * 1000)  # stale bytes that must not end up in the file
    download_file(server.url + IMAGES, tmp_path / "val2017.zip", md5=_md5(data), progress=False)
    assert server.requests == [(IMAGES, "bytes=1000-")]
    assert (tmp_path / "val2017.zip").read_bytes() == data


def test_dropped_connection_keeps_part_and_resumes(tmp_path, server, archives):
    data = archives[IMAGES]
    server.drop_first_after = 100_000
    dest = tmp_path / "val2017.zip"
    with pytest.raises(
        DownloadError, match=r"stopped after 100000 of \d+ bytes; run again to resume"
    ):
        download_file(server.url + IMAGES, dest, md5=_md5(data), progress=False)
    assert (tmp_path / "val2017.zip.part").stat().st_size == 100_000 and not dest.exists()
    download_file(server.url + IMAGES, dest, md5=_md5(data), progress=False)
    assert server.requests == [(IMAGES, None), (IMAGES, "bytes=100000-")]
    assert dest.read_bytes() == data


def test_complete_part_answered_416(tmp_path, server, archives):
    data = archives[IMAGES]
    (tmp_path / "val2017.zip.part").write_bytes(data)
    download_file(server.url + IMAGES, tmp_path / "val2017.zip", md5=_md5(data), progress=False)
    assert server.requests == [(IMAGES, f"bytes={len(data)}-")]
    assert (tmp_path / "val2017.zip").read_bytes() == data


def test_checksum_mismatch_removes_bad_file(tmp_path, server, archives):
    wrong = "0" * 32
    with pytest.raises(
        ChecksumError, match=f"MD5 {_md5(archives[IMAGES])}, expected {wrong}.*deleted"
    ):
        download_coco(
            tmp_path,
            "val2017",
            base_url=server.url,
            annotations=False,
            checksums={"val2017.zip": wrong},
            progress=False,
        )
    downloads = tmp_path / "downloads"
    assert list(downloads.iterdir()) == [], "neither the final file nor the .part may remain"
    assert not (tmp_path / "images").exists()


def test_official_size_is_enforced(tmp_path, server):
    # without an override the official table applies: the test server's val2017.zip is far too small
    assert OFFICIAL_FILES["val2017.zip"].size == 815_585_330
    with pytest.raises(ChecksumError, match="should have 815585330"):
        download_coco(tmp_path, "val2017", base_url=server.url, annotations=False, progress=False)
    assert not (tmp_path / "downloads" / "val2017.zip").exists()


def test_unreachable_server(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(DownloadError) as info:
        download_coco(tmp_path, "val2017", base_url=url, progress=False, timeout=5)
    message = str(info.value)
    assert f"could not reach 127.0.0.1:{closed_port}" in message
    assert f"download manually from {url}/zips/val2017.zip" in message
    assert str(tmp_path / "downloads" / "val2017.zip") in message


def test_http_error(tmp_path, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "/zips/nope.zip", tmp_path / "nope.zip", progress=False)


def test_hand_placed_archives_work_offline(tmp_path, archives, closed_port):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "val2017.zip").write_bytes(archives[IMAGES])
    (downloads / "annotations_trainval2017.zip").write_bytes(archives[ANNOTATIONS])
    layout = download_coco(
        tmp_path,
        "val2017",
        base_url=f"http://127.0.0.1:{closed_port}",
        checksums=_checksums(archives),
        progress=False,
    )
    assert layout.annotation_file.is_file() and len(list(layout.images_dir.glob("*.jpg"))) == 3


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli(tmp_path, server, archives, closed_port, capsys):
    md5 = _md5(archives[IMAGES])
    args = _parse(
        [
            "--root",
            str(tmp_path),
            "--base-url",
            server.url,
            "--no-annotations",
            "--md5",
            f"val2017.zip={md5.upper()}",
        ]
    )
    assert args.split == "val2017" and args.md5 == [("val2017.zip", md5)]
    assert run(args) == 0
    assert str(tmp_path / "images" / "val2017") in capsys.readouterr().out
    assert _parse(["--root", "x", "--md5", "a.zip=skip"]).md5 == [("a.zip", None)]
    with pytest.raises(SystemExit):
        _parse(["--root", "x", "--md5", "val2017.zip=nothex"])
    args = _parse(
        ["--root", str(tmp_path / "other"), "--base-url", f"http://127.0.0.1:{closed_port}"]
    )
    assert run(args) == 1
    assert "could not reach" in capsys.readouterr().err


def test_unexpected_archive_content(tmp_path, server):
    bogus = _zip({"something/else.txt": b"hi"})
    server.files = {IMAGES: bogus}
    with pytest.raises(DownloadError, match=r"did not unpack to .*images/val2017"):
        download_coco(
            tmp_path,
            "val2017",
            base_url=server.url,
            annotations=False,
            checksums={"val2017.zip": _md5(bogus)},
            progress=False,
        )


def test_deleted_images_are_fetched_again(tmp_path, server, archives):
    kwargs = {
        "base_url": server.url,
        "annotations": False,
        "checksums": _checksums(archives),
        "progress": False,
    }
    layout = download_coco(tmp_path, "val2017", **kwargs)
    assert layout.annotation_file is None
    shutil.rmtree(layout.images_dir)
    download_coco(tmp_path, "val2017", **kwargs)
    assert len(server.requests) == 2 and len(list(layout.images_dir.glob("*.jpg"))) == 3
