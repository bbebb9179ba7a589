FROM python:3.12-slim
WORKDIR /app
COPY start.sh /usr/local/bin/start.sh
ENTRYPOINT ["start.sh"]
