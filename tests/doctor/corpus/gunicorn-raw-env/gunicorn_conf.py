# graceful's gunicorn example: raw_env sets GRACEFUL_* in the master before it forks.
import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
worker_class = "graceful.gunicorn.ThreadWorker"
workers = 2
raw_env = ["GRACEFUL_DRAIN_DELAY=15", f"APP_ENV={os.environ.get('APP_ENV', 'prod')}"]
