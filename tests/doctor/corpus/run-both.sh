#!/bin/bash
nginx -g "daemon off;" &
exec uvicorn app:app --uds /tmp/app.sock
