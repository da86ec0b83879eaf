"""OpenTelemetry tracing: wired, and off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from backoffice.settings import ServiceSettings


def setup(app: FastAPI, settings: ServiceSettings) -> bool:
    """Export spans over OTLP/HTTP when an endpoint is configured; return whether tracing is on."""
    if not settings.otlp_endpoint:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)
    app.state.tracer = trace.get_tracer(settings.service_name)
    return True
