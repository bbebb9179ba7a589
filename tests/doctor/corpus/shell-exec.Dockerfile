FROM python:3.12-slim
CMD exec gunicorn -b 0.0.0.0:8000 app:app
