FROM python:3.12-slim
WORKDIR /app
COPY entrypoint-exec.sh ./
ENTRYPOINT ["./entrypoint-exec.sh"]
