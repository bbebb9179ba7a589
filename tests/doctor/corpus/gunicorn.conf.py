# gunicorn's settings docs: keepalive 2 by default; this one sets 5.
bind = "0.0.0.0:9000"
workers = 2
keepalive = 5
graceful_timeout = 20
