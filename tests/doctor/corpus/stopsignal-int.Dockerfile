FROM python:3.12-slim
STOPSIGNAL SIGINT
CMD ["uvicorn", "app:app"]
