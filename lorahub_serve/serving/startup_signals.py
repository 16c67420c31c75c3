"""Ctrl-C / SIGTERM while vLLM is still starting (before its server installs its own handlers).

Like vLLM's `run_server`, a signal raises KeyboardInterrupt, which unwinds the engine start-up.
But vLLM's `zmq_socket_ctx` swallows a KeyboardInterrupt that lands inside its start-up
handshake; the front end then waits for an engine that will never report ready (up to
`VLLM_ENGINE_READY_TIMEOUT_S`, 600 s). So after the first signal we repeat it every few seconds
until start-up has unwound; once the server runs, a repeat only re-requests its graceful
shutdown, which is idempotent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class StartupSignals:
    def __init__(self, repeat_s: float = 5.0):
        self.repeat_s = repeat_s
        self.unwound = threading.Event()
        self._repeater: threading.Thread | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        if self._repeater is None:
            self._repeater = threading.Thread(target=self._repeat, args=(signum,), daemon=True,
                                              name="lorahub-startup-signal")
            self._repeater.start()
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name} during start-up")

    def _repeat(self, signum: int) -> None:
        while not self.unwound.wait(self.repeat_s):
            print("lorahub-serve: still stopping; signalling again", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
