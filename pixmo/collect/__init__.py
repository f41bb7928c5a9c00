"""Collecting raw annotations: the ``pixmo collect`` web app's tasks, durable record store,
transcript worker and HTTP API, writing straight into the raw input contract."""
