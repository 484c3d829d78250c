"""What the producer and the ERP workers share, and nothing else crosses between them.

The contract proper: ``names`` (task and queue names), ``message`` (the typed item message, schema
1) and ``wire`` (its bytes as Celery and kombu write them), ``keys`` (every Redis key, kombu's
included), ``states`` (the job's progress words), ``settings`` (the environment), ``errors`` (the
error tree) and ``ids``. The machinery both sides run on it: ``lease`` (the one lock),
``ledger`` (marks, placements, progress), ``store`` (the Redis connection), ``retrying`` (every
retry policy), ``celery_app`` (both Celery apps' configuration) and ``supervisor`` /
``supervision`` (the fleet's supervisor, run in every worker).
"""
