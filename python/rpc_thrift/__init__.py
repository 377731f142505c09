"""Compatibility layer for code written for the original Python SDK
(``rpc_thrift``, Python 2 + gevent + Cython), implemented on :mod:`rpc_sdk`.

The names user code imports keep their signatures and meaning (timeouts in
milliseconds, endpoints ``host:port`` or a Unix socket path); what differs
is listed in the SDK's README ("rpc_thrift compatibility").
"""

from rpc_sdk import wire as _wire

# Message types of the original's control messages (SPEC section 2).
MESSAGE_TYPE_HEART_BEAT = _wire.HEARTBEAT
MESSAGE_TYPE_STOP = _wire.STOP
