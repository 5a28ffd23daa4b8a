"""Ctrl-C / SIGTERM: the first asks for a stop at the next chunk boundary, a second stops at once
unless a checkpoint is being written, and the previous handlers come back afterwards."""

import os
import signal
import threading

import pytest

from cromac_jax.stopping import StopRequest, TrainingStopped


def _raise_signal(signum):
    os.kill(os.getpid(), signum)
    for _ in range(1000):  # the Python-level handler runs at the next bytecode boundary
        pass


def test_first_signal_is_a_request_second_stops_now_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    said = []
    with StopRequest(said.append) as stop:
        assert not stop.requested
        _raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM" and stop.exit_code == 143
        assert len(said) == 1 and "SIGTERM received" in said[0]
        with pytest.raises(KeyboardInterrupt):
            _raise_signal(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before


def test_a_second_signal_waits_until_the_checkpoint_is_written():
    finished = []
    with StopRequest() as stop:
        _raise_signal(signal.SIGINT)
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            with stop.saving():
                _raise_signal(signal.SIGINT)
                finished.append("saved")  # still runs: the stop waits for the end of the save
    assert finished == ["saved"]


def test_disabled_or_off_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before
    seen = []

    def worker():
        with StopRequest():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [before]


def test_training_stopped_is_a_keyboard_interrupt_with_an_exit_code():
    e = TrainingStopped("stopped", 143)
    assert isinstance(e, KeyboardInterrupt) and e.exit_code == 143 and str(e) == "stopped"
