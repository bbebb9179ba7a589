FROM python:3.12-slim
WORKDIR /app
COPY . .
RUN pip install uvicorn
# Docker docs: shell form runs under /bin/sh -c
CMD uvicorn app:app --host 0.0.0.0
