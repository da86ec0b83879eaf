"""Local stack for development and tests: PostgreSQL, Kafka and the services, started and stopped here."""
