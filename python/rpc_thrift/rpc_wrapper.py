"""Decorators for handler methods, as in the original: log each call's
duration and turn any exception into the declared ``RpcException`` (from
``rpc_thrift.services``), so the client gets the error text and trace
instead of a bare internal error::

    class TypoHandler:
        @rpc_wrapper_for_class_method(info_logger)
        def correct_typo(self, query): ...
"""

import functools
import time
import traceback

from .services.ttypes import RpcException


def _wrap(info_logger, arg_format, skip, fmt):
    def describe(args):
        args = args[skip:]
        return arg_format(*args) if arg_format else ", ".join(map(str, args))

    def wrapper(func):
        @functools.wraps(func)
        def call(*args, **kwargs):
            try:
                if not info_logger:
                    return func(*args, **kwargs)
                t = time.time()
                result = func(*args, **kwargs)
                ms = (time.time() - t) * 1000
                info_logger.info(fmt, func.__name__, describe(args), ms)
                return result
            except Exception as e:
                raise RpcException(0, "%s(%s), Exception: %s, Trace: %s" % (
                    func.__name__, describe(args), e, traceback.format_exc())) from None

        return call

    return wrapper


def rpc_wrapper_for_class_method(info_logger, arg_format=None):
    """For methods (``self`` is left out of the logged arguments);
    ``info_logger`` may be None, ``arg_format(*args)`` formats the arguments."""
    return _wrap(info_logger, arg_format, 1, "%s(%s), Elapsed: %.2fms")


def rpc_wrapper_for_method(info_logger, arg_format=None):
    """For plain functions; see :func:`rpc_wrapper_for_class_method`."""
    return _wrap(info_logger, arg_format, 0, "%s(%s), Elapsed: %.4fms")
