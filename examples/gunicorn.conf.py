"""gunicorn settings for a lossless rollout: ``gunicorn -c examples/gunicorn.conf.py examples.flask_app:app``.

For the ASGI example use ``worker_class = "graceful.gunicorn.UvicornWorker"`` and
``examples.starlette_app:app``. graceful's own settings come from ``GRACEFUL_*`` environment
variables (``raw_env`` below sets them like ``-e``); the master reads them before it forks.
"""

import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
# The drain clock runs in the master; every worker class of graceful.gunicorn installs it.
# (Not "...SyncWorker": gunicorn swaps any class ending so for its own gthread when threads > 1.)
worker_class = "graceful.gunicorn.ThreadWorker"
workers = 2
threads = 4
# Seconds of serving after SIGTERM while load balancers catch up, and the in-flight bound after it.
# terminationGracePeriodSeconds >= GRACEFUL_DRAIN_DELAY + graceful_timeout + 2 s.
raw_env = [
    f"GRACEFUL_DRAIN_DELAY={os.environ.get('GRACEFUL_DRAIN_DELAY', '5')}",
    f"GRACEFUL_DRAIN_TIMEOUT={os.environ.get('GRACEFUL_DRAIN_TIMEOUT', '25')}",
]
# graceful_timeout: left unset, graceful maps GRACEFUL_DRAIN_TIMEOUT onto it; set it to override.
# Keep-alive below the load balancer's idle timeout, as usual.
keepalive = 5
