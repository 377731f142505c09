"""``rpc_thrift.services``: the original's base service (IDL:
``rpc_thrift/rpc_thrift.services.thrift``, shipped with this package).

Code that ``thrift --gen py`` generates from an IDL doing
``include "rpc_thrift.services.thrift"`` and
``service X extends rpc_thrift.services.RpcServiceBase`` imports
``rpc_thrift.services.RpcServiceBase`` and ``rpc_thrift.services.ttypes``:
these modules are written by hand to the generated code's conventions (of
compilers 0.13 and later), so such code runs unchanged.
"""

__all__ = ["ttypes", "constants", "RpcServiceBase"]
