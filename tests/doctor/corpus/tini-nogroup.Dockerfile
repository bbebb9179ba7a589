FROM python:3.12-slim
ENTRYPOINT ["tini", "--"]
CMD uvicorn app:app
