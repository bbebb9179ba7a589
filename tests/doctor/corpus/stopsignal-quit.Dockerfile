FROM python:3.12-slim
STOPSIGNAL SIGQUIT
CMD ["uvicorn", "app:app"]
