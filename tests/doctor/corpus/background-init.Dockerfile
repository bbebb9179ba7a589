FROM python:3.12-slim
COPY run-both.sh /run-both.sh
ENTRYPOINT ["graceful-run", "--", "/run-both.sh"]
