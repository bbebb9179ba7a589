#!/bin/sh
set -e
# migrations first
python manage.py migrate
uvicorn app:app \
  --host 0.0.0.0 --port 8000
