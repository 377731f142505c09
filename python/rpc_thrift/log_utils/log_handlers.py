"""Handlers named in users' ``LOGGING`` settings, e.g.
``'class': 'rpc_thrift.log_utils.log_handlers.CustomWatchedFileHandler'``."""

import logging
import logging.handlers


class CustomWatchedFileHandler(logging.handlers.WatchedFileHandler):
    """A file handler that reopens its file when it was moved or removed
    (an external logrotate), as the original's: the standard library's
    ``WatchedFileHandler`` does exactly that."""


class KidsLogHandler(logging.Handler):
    """Publishes each record to ``{topic}.{logger name}`` through a
    redis-like client (``publish(channel, message)``) that a project
    provides by overriding :meth:`get_kids`; without one, records go to
    ``handleError``, as in the original."""

    def __init__(self, redis, topic="", level=logging.NOTSET):
        super().__init__(level)
        self.topic = topic or "default"
        self.redis_conf_name = redis
        self.kids_redis = None

    def get_kids(self):
        """The client to publish with; projects override this."""
        return None

    def emit(self, record):
        # Looked up on first use: the project's settings may import this module.
        if not self.kids_redis:
            self.kids_redis = self.get_kids()
        try:
            if self.kids_redis is None:
                raise RuntimeError("KidsLogHandler.get_kids() returned no client")
            self.kids_redis.publish(self.topic + "." + record.name, self.format(record).encode("utf-8"))
        except Exception:
            self.handleError(record)
