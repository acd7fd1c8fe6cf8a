"""Ctrl-C during a storage call is raised when the call returns (a KeyboardInterrupt inside
SQLAlchemy's commit left SQLite locked and hung the agent's clean-up); elsewhere at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from endebias.sweeps import interrupts


@pytest.fixture(autouse=True)
def restore_sigint():
    previous = signal.getsignal(signal.SIGINT)
    # Start from Python's own handler, whatever an earlier test left behind or the shell
    # gave (a background job starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts._State.installed = False
    yield
    signal.signal(signal.SIGINT, previous)
    interrupts._State.installed = False
    interrupts._State.pending = False
    interrupts._State.depth = 0


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_inside_the_block_is_raised_when_it_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt), interrupts.held_interrupts():
        ctrl_c()
        finished.append("the call ran to its end")
    assert finished == ["the call ran to its end"]


def test_nested_blocks_raise_at_the_outermost_end():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.held_interrupts():
        with interrupts.held_interrupts():
            ctrl_c()
            steps.append("inner")
        steps.append("outer")
    assert steps == ["inner", "outer"]


def test_a_ctrl_c_outside_any_block_is_raised_at_once():
    with interrupts.held_interrupts():
        pass
    with pytest.raises(KeyboardInterrupt):
        ctrl_c()
        pytest.fail("not raised at once")


def test_a_second_ctrl_c_is_not_held():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.held_interrupts():
        ctrl_c()
        steps.append("first held")
        ctrl_c()
        steps.append("second held too")
    assert steps == ["first held"]


def test_a_handler_of_the_program_is_left_alone():
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    with interrupts.held_interrupts():
        ctrl_c()
    assert seen == [signal.SIGINT]


def test_other_threads_are_not_guarded():
    depths = []

    def work():
        with interrupts.held_interrupts():
            depths.append(interrupts._State.depth)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert depths == [0]
