"""Logging helpers of the original: ``log.dictConfig`` and the handlers in
``log_handlers`` that Django-style ``LOGGING`` settings name by path."""
