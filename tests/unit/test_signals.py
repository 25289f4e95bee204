"""engine/signals.py in one process: which signals become a stop request, and what is restored afterwards."""
import os
import signal

from aupretrain.engine.signals import StopRequest, deepspeed_runner


def test_sigint_is_a_stop_request_unless_it_was_ignored_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop = StopRequest(watch_every_s=0)
        os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread before the next bytecode
        assert stop.received == signal.SIGINT and stop.count == 1
        stop.close()
        stop.close()  # twice: nothing restored twice
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        # started in the background of a non-interactive shell: SIGINT ignored, and left so (not this job's Ctrl-C)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop = StopRequest(watch_every_s=0)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == stop._handle
        stop.close()
        assert signal.getsignal(signal.SIGTERM) != stop._handle
    finally:
        signal.signal(signal.SIGINT, before)


def test_no_launcher_watch_outside_deepspeeds_local_launcher():
    assert deepspeed_runner() is None  # pytest's parent is no deepspeed.launcher.launch
    stop = StopRequest(watch_every_s=0.05)
    try:
        assert stop._watch is None
    finally:
        stop.close()
