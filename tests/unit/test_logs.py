"""JSON Lines logs: chunk encoding (text or base64), the writer, the torn-line-tolerant reader."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from quire.ci.store.logs import ChunkEncoder, LogReader, LogWriter, event_bytes, timestamp


def encode_all(chunks: list[bytes]) -> list[dict[str, str]]:
    encoder = ChunkEncoder()
    fields = [encoder.feed(chunk) for chunk in chunks]
    fields.append(encoder.flush())
    return [f for f in fields if f is not None]


def joined(fields: list[dict[str, str]]) -> bytes:
    return b"".join(event_bytes(f) for f in fields)


def test_utf8_chunk_is_text() -> None:
    assert ChunkEncoder().feed("héllo ✓\n".encode()) == {"data": "héllo ✓\n"}


def test_multibyte_character_split_across_chunks_stays_text() -> None:
    data = "café ✓".encode()
    # split inside "é" (2 bytes) and inside "✓" (3 bytes)
    chunks = [data[:4], data[4:8], data[8:]]
    assert b"".join(chunks) == data
    fields = encode_all(chunks)
    assert all("encoding" not in f for f in fields)
    assert "".join(f["data"] for f in fields) == "café ✓"


def test_character_split_over_every_byte_stays_text() -> None:
    data = "✓€𝄞".encode()
    fields = encode_all([bytes([b]) for b in data])
    assert all("encoding" not in f for f in fields)
    assert "".join(f["data"] for f in fields) == "✓€𝄞"


def test_invalid_bytes_become_base64_and_round_trip() -> None:
    chunk = b"ok \xff\xfe end\n"
    fields = ChunkEncoder().feed(chunk)
    assert fields is not None
    assert fields["encoding"] == "base64"
    assert event_bytes(fields) == chunk


def test_incomplete_character_at_end_of_stream_is_flushed_as_base64() -> None:
    fields = encode_all([b"abc\xe2\x9c"])
    assert fields[0] == {"data": "abc"}
    assert fields[1]["encoding"] == "base64"
    assert joined(fields) == b"abc\xe2\x9c"


def test_held_prefix_followed_by_invalid_bytes_round_trips() -> None:
    fields = encode_all([b"x\xc3", b"(y"])
    assert joined(fields) == b"x\xc3(y"


def test_stream_recovers_to_text_after_invalid_bytes() -> None:
    fields = encode_all([b"\xff", b"plain text"])
    assert fields[0]["encoding"] == "base64"
    assert fields[1] == {"data": "plain text"}


def test_any_split_of_any_bytes_round_trips_exactly() -> None:
    rng = random.Random(1234)
    alphabet = ["a", "é", "✓", "𝄞", "\n"]
    for _ in range(200):
        pieces: list[bytes] = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.1:
                pieces.append(bytes([rng.randint(0x80, 0xFF)]))
            else:
                pieces.append(rng.choice(alphabet).encode())
        data = b"".join(pieces)
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 6))))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert joined(encode_all(chunks)) == data


def test_event_bytes_of_text_event_is_its_utf8() -> None:
    assert event_bytes({"event": "stdout", "data": "é"}) == b"\xc3\xa9"
    assert event_bytes({"event": "stdout"}) == b""


def test_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp())


def test_writer_appends_one_flushed_json_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with LogWriter(path) as log:
        log.event("sh-start", cmd="echo é")
        # Readable before close: each event is flushed as it is written.
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1
        log.event("sh-exit", exit=0, duration_s=0.5)
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in events] == ["sh-start", "sh-exit"]
    assert events[0]["cmd"] == "echo é"
    assert events[1]["exit"] == 0
    assert all(e["t"].endswith("Z") for e in events)


def test_writer_appends_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with LogWriter(path) as log:
        log.event("run-start")
    with LogWriter(path) as log:
        log.event("run-end")
    assert [e["event"] for e in LogReader(path)] == ["run-start", "run-end"]


def test_writer_escapes_newlines_in_data(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with LogWriter(path) as log:
        log.event("stdout", data="one\ntwo\n")
    assert len(path.read_bytes().splitlines()) == 1
    assert next(iter(LogReader(path)))["data"] == "one\ntwo\n"


def write_lines(path: Path, events: list[dict[str, Any]], tail: bytes = b"") -> None:
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    path.write_bytes(body + tail)


def test_reader_tolerates_a_torn_last_line_and_sets_torn(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_lines(path, [{"event": "a"}, {"event": "b"}], tail=b'{"t": "2026", "eve')
    reader = LogReader(path)
    assert [e["event"] for e in reader] == ["a", "b"]
    assert reader.torn
    assert reader.bad_lines == 0


def test_reader_of_a_whole_log_is_not_torn(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_lines(path, [{"event": "a"}])
    reader = LogReader(path)
    assert [e["event"] for e in reader] == ["a"]
    assert not reader.torn


def test_reader_counts_unparsable_lines_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"event": "a"}\nnot json\n[1, 2]\n{"event": "b"}\n')
    reader = LogReader(path)
    assert [e["event"] for e in reader] == ["a", "b"]
    assert reader.bad_lines == 2
    assert not reader.torn


def test_reader_resumes_a_torn_line_once_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    write_lines(path, [{"event": "a"}], tail=b'{"event": ')
    reader = LogReader(path)
    with open(path, "rb") as handle:
        assert [e["event"] for e in reader.read_from(handle)] == ["a"]
        assert reader.torn
        with open(path, "ab") as writer:
            writer.write(b'"b"}\n')
        assert [e["event"] for e in reader.read_from(handle)] == ["b"]
        assert not reader.torn


def test_reader_of_an_empty_log_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"")
    reader = LogReader(path)
    assert list(reader) == []
    assert not reader.torn


@pytest.mark.parametrize("data", [b"\x00\x01binary\xff", b"plain", b""])
def test_written_base64_event_reads_back_as_the_same_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "log.jsonl"
    fields = encode_all([data])
    with LogWriter(path) as log:
        for f in fields:
            log.event("stdout", **f)
    assert b"".join(event_bytes(e) for e in LogReader(path)) == data
