"""Secret redaction, in whole strings and across the chunks of a byte stream."""

from __future__ import annotations

import random

from quire.ci.run.redact import MASK, Redactor


def stream_through(redactor: Redactor, chunks: list[bytes]) -> bytes:
    stream = redactor.stream()
    return b"".join(stream.feed(c) for c in chunks) + stream.flush()


def test_redact_replaces_every_occurrence() -> None:
    redactor = Redactor(["hunter2"])
    assert redactor.redact("pw=hunter2, again hunter2.") == "pw=***, again ***."


def test_redact_without_secrets_changes_nothing() -> None:
    redactor = Redactor()
    assert not redactor
    assert redactor.redact("hunter2") == "hunter2"
    assert stream_through(redactor, [b"hun", b"ter2"]) == b"hunter2"


def test_empty_secret_is_ignored() -> None:
    redactor = Redactor([""])
    assert not redactor
    assert redactor.redact("anything") == "anything"


def test_longer_secret_containing_a_shorter_one_is_masked_whole() -> None:
    redactor = Redactor(["abc", "abcdef"])
    assert redactor.redact("x abcdef y abc") == "x *** y ***"
    assert stream_through(redactor, [b"x abcdef y abc"]) == b"x *** y ***"


def test_added_secret_is_redacted_from_then_on() -> None:
    redactor = Redactor()
    redactor.add("late-secret")
    assert redactor.redact("the late-secret") == "the ***"


def test_multiline_secret_is_redacted() -> None:
    key = "-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----"
    redactor = Redactor([key])
    assert redactor.redact(f"key:\n{key}\ndone") == "key:\n***\ndone"
    assert stream_through(redactor, [f"key:\n{key}\ndone".encode()]) == b"key:\n***\ndone"


def test_secret_split_across_two_chunks_is_redacted() -> None:
    redactor = Redactor(["hunter2"])
    out = stream_through(redactor, [b"password: hun", b"ter2 ok\n"])
    assert out == b"password: *** ok\n"


def test_multiline_secret_split_across_chunks_at_the_newline_is_redacted() -> None:
    key = "line-one\nline-two"
    redactor = Redactor([key])
    out = stream_through(redactor, [b"begin line-one\n", b"line-two end"])
    assert out == b"begin *** end"


def test_secret_split_over_every_byte_is_redacted() -> None:
    redactor = Redactor(["s3cr3t"])
    data = b"a s3cr3t b"
    assert stream_through(redactor, [bytes([b]) for b in data]) == b"a *** b"


def test_non_ascii_secret_split_inside_a_character_is_redacted() -> None:
    secret = "pässwörd"
    redactor = Redactor([secret])
    data = f"<{secret}>".encode()
    cut = data.index("ä".encode()) + 1
    assert stream_through(redactor, [data[:cut], data[cut:]]) == b"<***>"


def test_stream_holds_back_only_a_possible_secret_prefix() -> None:
    stream = Redactor(["hunter2"]).stream()
    assert stream.feed(b"say hun") == b"say "
    assert stream.feed(b"gry") == b"hungry"
    assert stream.flush() == b""


def test_flush_releases_a_prefix_that_never_completed() -> None:
    stream = Redactor(["hunter2"]).stream()
    assert stream.feed(b"end: hunt") == b"end: "
    assert stream.flush() == b"hunt"


def test_random_splits_never_leak_a_secret() -> None:
    rng = random.Random(99)
    secrets = ["tok3n", "ab\ncd", "xyzzy-long-value"]
    redactor = Redactor(secrets)
    for _ in range(300):
        parts = [rng.choice(["filler ", "t", "ab", "\n", *secrets]) for _ in range(12)]
        text = "".join(parts)
        data = text.encode()
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, 5)))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        out = stream_through(redactor, chunks)
        assert out == redactor.redact(text).encode()
        for secret in secrets:
            assert secret.encode() not in out


def test_mask_is_three_stars() -> None:
    assert MASK == "***"
