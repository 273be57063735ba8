"""The service around the domain: the Celery app and its tasks, leases, submitting and staging
a job, cancelling it, the nightly trigger. Only `qbench submit/status/cancel`, the workers and
beat use it; `qbench run` runs the same units without it."""
