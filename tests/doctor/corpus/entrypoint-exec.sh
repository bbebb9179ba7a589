#!/bin/sh
set -e
python manage.py migrate
exec gunicorn -b 0.0.0.0:8000 app:app
