"""The mixed-fleet tests reuse the Python SDK tests' helpers
(python/tests/harness.py: free ports, managed processes, a throwaway
ZooKeeper) and generate the Echo example's Python code for the run. The
Python SDK (rpc_sdk, rpc_thrift) comes from this checkout, ahead of any
installed copy, in the tests and in the workers they start."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SDK = os.path.join(REPO, "python")
sys.path[:0] = [SDK, os.path.join(SDK, "tests")]

IDL = os.path.join(REPO, "examples", "thrift", "echo.thrift")
_gen_dir = None


def pytest_configure(config):
    global _gen_dir
    if shutil.which("thrift") is None:
        raise pytest.UsageError("thrift compiler (Debian thrift-compiler) not installed")
    _gen_dir = tempfile.mkdtemp(prefix="rpc-mixed-gen-")
    subprocess.run(["thrift", "--gen", "py", "-out", _gen_dir, IDL], check=True, timeout=60)
    sys.path.insert(0, _gen_dir)
    paths = [_gen_dir, HERE, SDK, os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def pytest_unconfigure(config):
    if _gen_dir:
        shutil.rmtree(_gen_dir, ignore_errors=True)
