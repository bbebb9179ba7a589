FROM python:3.12-slim AS base
CMD uvicorn app:app
FROM base
RUN true
