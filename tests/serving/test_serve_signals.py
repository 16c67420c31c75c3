"""SIGTERM while vLLM is still starting stops `serve` (slow: one more engine start)."""

import signal
import subprocess
import sys
import time

import pytest

from lorahub_serve import testing
from lorahub_serve.serving.process import free_port

pytest.importorskip("vllm", reason="vLLM is not installed here")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_sigterm_during_engine_start(tmp_path):
    testing.tiny_llama(tmp_path / "model", hidden=128)
    (tmp_path / "store").mkdir()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorahub_serve.cli", "serve", "--model",
                                 str(tmp_path / "model"), "--store", str(tmp_path / "store"),
                                 "--port", str(free_port())], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "EngineCore" not in log.read_text(errors="replace"):  # the engine is being started
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
