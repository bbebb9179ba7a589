FROM python:3.12-slim
SHELL ["/bin/bash", "-c"]
CMD uvicorn app:app --host 0.0.0.0 | tee /tmp/log
