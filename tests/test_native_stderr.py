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
