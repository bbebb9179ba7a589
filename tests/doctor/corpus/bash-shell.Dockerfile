FROM python:3.12-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# bash execs the last command of its -c text itself
CMD cd /app && uvicorn app:app --host 0.0.0.0
