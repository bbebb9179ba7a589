"""Example WSGI service on Flask: fast, slow and streamed routes behind graceful's WSGI middleware.

Run it under gunicorn with the drain in the master (threaded WSGI workers):

    gunicorn -c examples/gunicorn.conf.py examples.flask_app:app

or ``gunicorn -k graceful.gunicorn.ThreadWorker -w 2 --threads 4 examples.flask_app:app``; then
``curl -s localhost:8000/healthz`` and ``kill -TERM <master pid>``.

The graceful worker classes wrap any app that is not wrapped yet; wrapping it yourself, as here, is
how Flask apps get the probes under any other WSGI server too. Django: in ``wsgi.py``,
``application = GracefulMiddleware(get_wsgi_application())``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

from graceful.wsgi import GracefulMiddleware

POD = os.environ.get("POD_NAME", str(os.getpid()))

app = Flask(__name__)


@app.get("/")
def info() -> Response:
    return jsonify(pod=POD, pid=os.getpid())


@app.get("/fast")
def fast() -> Response:
    return Response(f"fast from {POD}\n", mimetype="text/plain")


@app.get("/slow")
def slow() -> Response:
    """A long request: ``/slow?seconds=1.5`` (it holds one worker thread meanwhile)."""
    seconds = min(float(request.args.get("seconds", "1.5")), 30.0)
    time.sleep(seconds)
    return Response(f"slow {seconds:g}s from {POD}\n", mimetype="text/plain")


@app.get("/stream")
def stream() -> Response:
    """A streamed body: ``/stream?chunks=10&interval=0.1``, one numbered line per chunk."""
    chunks = min(int(request.args.get("chunks", "10")), 1000)
    interval = min(float(request.args.get("interval", "0.1")), 5.0)

    def lines() -> Iterator[str]:
        for number in range(chunks):
            yield f"{number}\n"
            time.sleep(interval)
        yield "end\n"

    return Response(lines(), mimetype="text/plain")


# Flask's own middleware slot: the Flask object stays importable as `app` for gunicorn.
app.wsgi_app = GracefulMiddleware(app.wsgi_app)  # type: ignore[method-assign]
