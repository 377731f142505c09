"""Generates the Echo example's Python code (`thrift --gen py`) into a temp
dir for the whole run and puts it, and this directory, on the import path of
the tests and of the worker processes they start."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# The installed package is tested, as users get it; without one, the source tree.
if importlib.util.find_spec("rpc_sdk") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (sys.path[0], os.environ.get("PYTHONPATH", "")) if p
    )

import harness  # noqa: E402

IDL = os.path.join(harness.TESTS_DIR, "..", "..", "examples", "thrift", "echo.thrift")
_gen_dir = None


def pytest_configure(config):
    global _gen_dir
    if shutil.which("thrift") is None:
        if harness.STRICT:
            raise pytest.UsageError("thrift compiler (Debian thrift-compiler) not installed")
        return  # modules needing generated code skip themselves
    _gen_dir = tempfile.mkdtemp(prefix="rpc-sdk-gen-")
    subprocess.run(["thrift", "--gen", "py", "-out", _gen_dir, IDL], check=True, timeout=60)
    sys.path.insert(0, _gen_dir)
    paths = [_gen_dir, harness.TESTS_DIR, os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def pytest_unconfigure(config):
    if _gen_dir:
        shutil.rmtree(_gen_dir, ignore_errors=True)


@pytest.fixture
def procs(tmp_path, request):
    """Processes of one test; their logs are printed if the test fails."""
    group = harness.Procs(tmp_path)
    yield group
    group.close()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and group.all:
        print(group.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
