#!/bin/sh
set -e
if [ "$1" = "gunicorn" ]; then
  chown -R app /data
  gosu app "$@"
fi
exec "$@"
