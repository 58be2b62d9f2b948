"""Ctrl-C and SIGTERM as exceptions, held back inside ``signals.held()``."""

import os
import signal
import time

import pytest

from geovq import Terminated, signals


@pytest.fixture
def installed():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in this (the main) thread at the next bytecode


def test_sigterm_becomes_an_interrupt_and_a_second_one_ends_the_process(installed):
    with pytest.raises(Terminated):
        _deliver(signal.SIGTERM)
    assert isinstance(Terminated(), KeyboardInterrupt)  # every Ctrl-C cleanup runs on it
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_inside_held_waits_for_the_block_to_end(installed):
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            _deliver(signal.SIGINT)
            with signals.held():  # nested: still held until the outer block ends
                pass
            finished.append("block")
    assert finished == ["block"]
    with signals.held():  # nothing pending any more
        pass


def test_held_without_a_signal_raises_nothing(installed):
    with signals.held():
        value = 1
    assert value == 1
