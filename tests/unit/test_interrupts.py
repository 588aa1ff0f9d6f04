"""quire.interrupts: signals become `Interrupted` inside `raising()`, are swallowed inside
`shielded()`, and both give back exactly the handlers they found.

Signals are real: each test sends one to this process with `os.kill`. The
`previous` fixture first installs a recording handler for the three signals,
so a signal that escapes (a broken shield, an unrestored handler) is seen by
the test instead of killing the test process with SIGTERM's or SIGHUP's
default action.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest

from quire import interrupts
from quire.errors import Interrupted
from quire.interrupts import SIGNALS, raising, shielded

ALL = pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)


def send(sig: signal.Signals) -> None:
    """Deliver `sig` to this process and give its Python handler the chance to run."""
    os.kill(os.getpid(), sig)
    # The handler runs on the main thread at the next bytecode boundary; a
    # sleep interrupted by a signal runs the handler, then sleeps on (PEP 475).
    time.sleep(0.02)


@contextmanager
def nothing_escapes() -> Iterator[None]:
    """A signal raised out of a shield fails the test (pytest would stop the session)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        pytest.fail(f"a signal got through the shield: {exc!r}")


class Recorder:
    """A plain Python handler that records what reached it."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen.append(signum)


@pytest.fixture
def previous(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """The handlers in place before each test: one recorder for all three signals."""
    monkeypatch.setattr(interrupts, "_shield_depth", 0)
    recorder = Recorder()
    original = {sig: signal.signal(sig, recorder) for sig in SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield recorder
    finally:
        # A test that failed with the signals still blocked leaves them pending:
        # take them off the queue rather than have them hit the next handler.
        while pending := signal.sigpending() & set(SIGNALS):
            signal.sigtimedwait(pending, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in original.items():
            signal.signal(sig, handler)


def handlers() -> dict[signal.Signals, object]:
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


# --- raising() ------------------------------------------------------------------------------------


@ALL
def test_raising_turns_each_signal_into_interrupted(
    previous: Recorder, sig: signal.Signals
) -> None:
    with pytest.raises(Interrupted) as caught, raising():
        send(sig)
    assert signal.Signals(sig).name in str(caught.value)
    assert previous.seen == []


def test_raising_restores_the_previous_handlers_on_exit(previous: Recorder) -> None:
    before = handlers()
    with raising():
        assert all(handler is not previous for handler in handlers().values())
    assert handlers() == before
    send(signal.SIGTERM)
    assert previous.seen == [signal.SIGTERM]


def test_raising_restores_the_previous_handlers_after_an_interrupt(previous: Recorder) -> None:
    before = handlers()
    with pytest.raises(Interrupted), raising():
        send(signal.SIGINT)
    assert handlers() == before


def test_raising_outside_the_main_thread_changes_nothing(previous: Recorder) -> None:
    before = handlers()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with raising():
                pass
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
    assert handlers() == before


# --- shielded() -----------------------------------------------------------------------------------


@ALL
def test_shielded_swallows_each_signal_and_the_block_completes(
    previous: Recorder, sig: signal.Signals
) -> None:
    reached_the_end = False
    with nothing_escapes(), shielded():
        send(sig)
        reached_the_end = True
    assert reached_the_end
    assert previous.seen == []  # swallowed, not passed on to the old handler


@ALL
def test_shielded_inside_raising_swallows_each_signal(
    previous: Recorder, sig: signal.Signals
) -> None:
    reached_the_end = False
    with nothing_escapes(), raising(), shielded():
        send(sig)
        reached_the_end = True
    assert reached_the_end


def test_shielded_restores_the_previous_handlers_on_exit(previous: Recorder) -> None:
    before = handlers()
    with shielded():
        assert all(handler is not previous for handler in handlers().values())
    assert handlers() == before
    send(signal.SIGHUP)
    assert previous.seen == [signal.SIGHUP]


def test_shielded_restores_the_previous_handlers_on_exception(previous: Recorder) -> None:
    before = handlers()
    with pytest.raises(ValueError, match="teardown failed"), shielded():
        raise ValueError("teardown failed")
    assert handlers() == before
    send(signal.SIGTERM)
    assert previous.seen == [signal.SIGTERM]


def test_shielded_restores_the_default_sigint_handler_exactly(previous: Recorder) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with shielded():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as caught:
        send(signal.SIGINT)
    assert type(caught.value) is KeyboardInterrupt  # Python's own, not quire's handler


def test_shielded_nested_in_raising_hands_back_raisings_handlers(previous: Recorder) -> None:
    with raising():
        during = handlers()
        with shielded():
            pass
        assert handlers() == during
    assert set(handlers().values()) == {previous}


def test_after_shielded_inside_raising_a_sigint_raises_again(previous: Recorder) -> None:
    with pytest.raises(Interrupted), raising():
        with nothing_escapes(), shielded():
            send(signal.SIGINT)  # swallowed
        send(signal.SIGINT)
    assert previous.seen == []


def test_after_a_shielded_exception_inside_raising_a_sigint_raises_again(
    previous: Recorder,
) -> None:
    with pytest.raises(Interrupted), raising():
        with pytest.raises(ValueError), shielded():
            raise ValueError("boom")
        send(signal.SIGINT)


def test_nested_shields_keep_shielding_until_the_outermost_exits(previous: Recorder) -> None:
    with pytest.raises(Interrupted), raising():
        with nothing_escapes(), shielded():
            with shielded():
                pass
            send(signal.SIGTERM)  # still inside the outer shield: swallowed
        send(signal.SIGTERM)


def test_shielded_leaves_the_signal_mask_as_it_found_it(previous: Recorder) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with shielded():
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_a_caught_interrupt_is_remembered_until_cleared(previous: Recorder) -> None:
    with interrupts.raising():
        with contextlib.suppress(Interrupted):  # job code swallowing it
            send(signal.SIGTERM)
        with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
            interrupts.check()
        assert str(interrupts.received()) == "interrupted by SIGTERM"
    interrupts.clear()
    assert interrupts.received() is None
    interrupts.check()  # nothing to raise


def test_a_signal_during_a_shield_is_remembered_too(previous: Recorder) -> None:
    with interrupts.shielded():
        send(signal.SIGHUP)
    assert str(interrupts.received()) == "interrupted by SIGHUP"
    interrupts.clear()
