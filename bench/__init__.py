"""`make bench`: each hot path against a bare baseline, on a private PostgreSQL and Kafka broker, as ratios."""
