"""``dictConfig`` for ``LOGGING_CONFIG = "rpc_thrift.log_utils.log.dictConfig"``.

The original carried a copy of Python 2.7's ``logging.config`` dictConfig
for older Pythons; on Python 3 these are the standard library's."""

from logging.config import (
    BaseConfigurator,
    ConvertingDict,
    ConvertingList,
    ConvertingTuple,
    DictConfigurator,
    dictConfig,
    valid_ident,
)

dictConfigClass = DictConfigurator

__all__ = [
    "BaseConfigurator",
    "ConvertingDict",
    "ConvertingList",
    "ConvertingTuple",
    "DictConfigurator",
    "dictConfig",
    "dictConfigClass",
    "valid_ident",
]
