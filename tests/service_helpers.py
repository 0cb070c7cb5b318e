"""The service helpers moved to the support package (support/__init__.py); re-exported here while
test files still import them from this module."""

from support.cli import CLI, script  # noqa: F401
from support.data import FIXTURES, GOOD, LONG, UNKNOWN  # noqa: F401
from support.servers import Service, free_port, post, running, status  # noqa: F401
from support.stores import store_with  # noqa: F401
