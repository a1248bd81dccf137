"""Native libraries' chatter on file descriptor 2 goes to the debug log; everything else still reaches stderr."""

import subprocess
import sys

from conftest import REPO

DRIVER = r"""
import logging, os, sys, threading
logging.basicConfig(level=logging.DEBUG, format="debug-log: %(message)s", stream=sys.stdout)
from retinaface_export.native_stderr import library_log_line, native_chatter_to_debug
with native_chatter_to_debug(library_log_line, "LiteRT"):
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    print("a warning of our own", file=sys.stderr)
    with native_chatter_to_debug(lambda line: line.startswith(b"ray"), "Ray"):
        os.write(2, b"ray: started\n")
        thread = threading.Thread(target=os.write, args=(2, b"I1205 12:00:00.000000 7 port.cc:153] oneDNN on\n"))
        thread.start()
        thread.join()
    os.write(2, b"W1205 12:00:00.000000 7 x.cc:1] a library warning\n")
    os.write(2, b"half a line, ")
os.write(2, b"then the rest\nafter\n")
"""


def test_chatter_goes_to_the_debug_log_and_the_rest_to_stderr_in_order():
    done = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "a warning of our own",
        "W1205 12:00:00.000000 7 x.cc:1] a library warning",
        "half a line, then the rest",
        "after",
    ]
    assert done.stdout.splitlines() == [
        "debug-log: LiteRT on standard error:",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "I1205 12:00:00.000000 7 port.cc:153] oneDNN on",
        "debug-log: Ray on standard error:",
        "ray: started",
    ]


BROKEN_TEST = r"""
import os
from retinaface_export.native_stderr import native_chatter_to_debug

def fails_on_some(line):
    if b"odd" in line:
        raise ValueError("a test that breaks")
    return line.startswith(b"chatter")

with native_chatter_to_debug(fails_on_some, "x"):
    for index in range(10000):  # far more than a pipe holds: a stopped reader would block the writes
        os.write(2, b"odd line %d\n" % index if index % 2 else b"chatter %d\n" % index)
print("done")
"""


def test_a_test_that_fails_on_a_line_passes_it_through_and_the_reader_goes_on():
    done = subprocess.run([sys.executable, "-c", BROKEN_TEST], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done"
    assert done.stderr.splitlines() == [f"odd line {index}" for index in range(1, 10000, 2)]
