"""Ctrl-C (SIGINT) during `minimoe generate` and `minimoe chat`: exit status 130, one line, no traceback.

The signal is sent once the process is provably mid-way: generate has streamed its first character (1000
tokens to go), chat has printed its greeting and waits for input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "minimoe", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)


def interrupt_and_check(process):
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the process did not stop within 60 s of SIGINT")
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "minimoe: interrupted"


def test_ctrl_c_during_generate():
    process = start("generate", "To be, or not to be", "--max-new-tokens", "1000")
    assert process.stdout.read(1), "generate streamed nothing"
    interrupt_and_check(process)


def test_ctrl_c_while_chat_waits_for_input():
    process = start("chat")
    seen = b""
    while b"to quit" not in seen:
        line = process.stderr.readline()
        assert line, f"chat exited before its greeting: {seen!r}"
        seen += line
    interrupt_and_check(process)


def test_chat_at_end_of_input_exits_cleanly():
    process = start("chat")
    _, err = process.communicate(b"", timeout=120)
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err
