FROM python:3.12-slim
# the lead knows: graceful: ignore[GR001]
CMD uvicorn app:app
