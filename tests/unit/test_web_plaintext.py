"""`output.txt`: every output byte of a job log, decoded in blocks, cached once finished."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import orjson
import pytest

from quire.ci.store.logs import ChunkEncoder, event_bytes
from quire.web import plaintext
from quire.web.plaintext import CACHE_NAME, PlainText, decoded
from tests.unit.test_web_support import line, out

BINARY = b"\xff\xfe\x00\x1b[31m"


def log_bytes() -> bytes:
    """Output with ANSI, invalid UTF-8, a partial line, stderr, markers and a torn end."""
    raw = base64.b64encode(BINARY).decode()
    return (
        line("sh-start", cmd="make")
        + out("one\n\x1b[32mgreen\x1b[0m\n")
        + line("stderr", data=raw, encoding="base64")
        + line("message", text="stdout")  # names a stream, but is no output
        + out("no newline yet, ")
        + out('then "quotes" \\ and ☃\n', "stderr")
        + b'not json but says "stdout"\n'
        + line("sh-exit", exit=0)
        + out("partial")
        + b'{"t":"2026","event":"stdout","data":"torn'
    )


EXPECTED = (
    b"one\n\x1b[32mgreen\x1b[0m\n"
    + BINARY
    + b"no newline yet, "
    + 'then "quotes" \\ and ☃\n'.encode()
    + b"partial"
)


def write_log(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "job").mkdir()
    path = tmp_path / "job" / "log.jsonl"
    path.write_bytes(data)
    return path


def download(log: Path, *, finished: bool) -> bytes:
    return b"".join(PlainText(log, finished=finished).blocks())


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_decoded_is_every_output_byte_exactly_whatever_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(plaintext, "BLOCK_BYTES", block)
    log = write_log(tmp_path, log_bytes())
    with open(log, "rb") as handle:
        assert b"".join(decoded(handle)) == EXPECTED


def test_a_running_jobs_log_is_decoded_and_not_cached(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    assert download(log, finished=False) == EXPECTED
    assert not (log.parent / CACHE_NAME).exists()


def test_a_finished_jobs_first_download_writes_the_cache_and_the_next_reads_it(
    tmp_path: Path,
) -> None:
    log = write_log(tmp_path, log_bytes())
    assert download(log, finished=True) == EXPECTED
    cache = log.parent / CACHE_NAME
    assert cache.read_bytes() == EXPECTED
    assert cache.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in log.parent.iterdir() if p.name.endswith(".tmp")] == []
    cache.write_bytes(b"from the cache")  # proves the second download reads it
    stamp = log.stat()
    os.utime(cache, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    text = PlainText(log, finished=True)
    assert text.size == len(b"from the cache")
    assert b"".join(text.blocks()) == b"from the cache"


def test_a_cache_older_or_newer_than_the_log_is_ignored_and_replaced(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    cache = log.parent / CACHE_NAME
    cache.write_bytes(b"stale")
    os.utime(cache, ns=(0, log.stat().st_mtime_ns - 1))
    text = PlainText(log, finished=True)
    assert text.size is None
    assert b"".join(text.blocks()) == EXPECTED
    assert cache.read_bytes() == EXPECTED


def test_a_cache_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    stamp = log.stat()
    os.utime(secret, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    (log.parent / CACHE_NAME).symlink_to(secret)
    assert download(log, finished=True) == EXPECTED
    assert secret.read_bytes() == b"secret"


def test_a_job_directory_that_takes_no_file_still_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = write_log(tmp_path, log_bytes())

    def refuse(**_: object) -> tuple[int, str]:
        raise PermissionError(13, "read-only")

    monkeypatch.setattr(plaintext.tempfile, "mkstemp", refuse)
    assert download(log, finished=True) == EXPECTED
    assert not (log.parent / CACHE_NAME).exists()


def test_a_download_dropped_half_way_leaves_no_cache_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plaintext, "BLOCK_BYTES", 16)
    log = write_log(tmp_path, log_bytes())
    blocks = PlainText(log, finished=True).blocks()
    next(blocks)
    blocks.close()
    assert sorted(p.name for p in log.parent.iterdir()) == ["log.jsonl"]


def reference(log: bytes) -> bytes:
    """What the JSON parser makes of every complete output line: the truth."""
    pieces = []
    for raw in log.split(b"\n")[:-1]:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") in ("stdout", "stderr"):
            pieces.append(event_bytes(event))
    return b"".join(pieces)


ALPHABET = [
    *(bytes([b]) for b in range(0x00, 0x20)),
    b'"', b"\\", b"/", b"\x7f", b"\x80", b"\xff", b"\xc3", b"\xa9",
    "é".encode(), "☃".encode(), "😀".encode(), "\U000f0000".encode(),
    b"\\u0041", b'\\"', b"a", b" ", b"\n",
]  # fmt: skip


def test_decoded_is_exactly_what_the_json_parser_makes_of_each_output_line(tmp_path: Path) -> None:
    rng = random.Random(20261204)
    encoder = ChunkEncoder()
    log = b""
    for _ in range(3000):
        chunk = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))
        fields = encoder.feed(chunk)
        if fields:
            log += line(rng.choice(["stdout", "stderr"]), **fields)
    # Lines no writer of ours makes, each of which the parser refuses or reads otherwise:
    for odd in (
        b'{"t":"x","event":"stdout","data":"a\\\\u0041"}',  # an escaped backslash, then u0041
        b'{"t":"x","event":"stdout","data":"\\u00e9\\ud83d\\ude00\\/"}',
        b'{"t":"x","event":"stdout","data":"ends in a backslash\\"}',
        b'{"t":"x","event":"stdout","data":"raw \x01 control"}',
        b'{"t":"x","event":"stdout","data":"bad \xff utf-8"}',
        b'{"t":"x","event":"stdout","data":"one","data":"two"}',
        b'{"t":"x","event":"stdout","data":"quote " inside"}',
        b'{"t":"x","event":"stdout","data":"\\a\\v\\0\\x41\\\'"}',
        b'{"t":"x\\"y","event":"stdout","data":"t with a quote"}',
        b'{"t":"x","event":"stdout","data":"QUJD","encoding":"base64"}',
        b'{"t":"x\x01","event":"stdout","data":"control in t"}',
    ):
        log += odd + b"\n"
    expected = reference(log)
    assert len(expected) > 1000
    path = write_log(tmp_path, log)
    with open(path, "rb") as handle:
        assert b"".join(decoded(handle)) == expected


def test_a_finished_jobs_download_is_the_plain_output_the_run_wrote(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    (log.parent / "output.txt").write_bytes(b"as the run wrote it")
    text = PlainText(log, finished=True)
    assert text.size == len(b"as the run wrote it")
    assert b"".join(text.blocks()) == b"as the run wrote it"
    assert not (log.parent / CACHE_NAME).exists()  # nothing decoded, nothing cached


def test_a_running_job_is_decoded_even_beside_its_plain_output(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    (log.parent / "output.txt").write_bytes(b"half of it")
    assert download(log, finished=False) == EXPECTED


def test_a_plain_output_that_is_a_symlink_or_a_directory_is_passed_over(tmp_path: Path) -> None:
    log = write_log(tmp_path, log_bytes())
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (log.parent / "output.txt").symlink_to(secret)
    assert download(log, finished=True) == EXPECTED
    (log.parent / "output.txt").unlink()
    (log.parent / "output.txt").mkdir()
    (log.parent / CACHE_NAME).unlink()
    assert download(log, finished=True) == EXPECTED
