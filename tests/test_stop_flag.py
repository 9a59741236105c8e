"""One stop flag for scoring and training (``autext_jax/signals.py``): a signal is a request, told to
``on_request`` at once; a second Ctrl-C interrupts; the previous handlers come back; and the module
training uses for it imports nothing from training (scoring code must never import training code)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from autext_jax.signals import StopFlag
from autext_jax.train import preemption


def test_training_takes_the_signals_with_the_scoring_flag():
    assert isinstance(preemption.training_signals(), StopFlag)
    assert not hasattr(preemption, "StopSignals")  # one class takes over the handlers, not two


def test_a_signal_is_a_request_and_a_second_ctrl_c_interrupts():
    told = []
    before = signal.getsignal(signal.SIGTERM)
    with preemption.training_signals(on_request=lambda: told.append(1)) as flag:
        assert not flag.starting  # training: even a signal during compilation is a request
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested == signal.SIGTERM and flag() and told == [1]
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        assert flag.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_signals_module_imports_no_training_code():
    code = (
        "import sys, autext_jax.signals; "
        "print([m for m in sys.modules if m.startswith('autext_jax.train')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
