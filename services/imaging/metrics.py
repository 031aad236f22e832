"""The imaging service's Prometheus metrics (module-level, one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSTANCES_RECEIVED = Counter(
    "imaging_instances_received_total",
    "DICOM instances received, by protocol and outcome",
    ["protocol", "outcome"],
)
STUDIES_COMPLETED = Counter("imaging_studies_completed_total", "Study versions declared complete")
ANALYSIS_SECONDS = Histogram(
    "imaging_analysis_duration_seconds",
    "Wall time of one analysis, from claim to committed result",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
ANALYSES = Counter("imaging_analyses_total", "Analyses finished, by outcome", ["outcome"])
QUEUE_DEPTH = Gauge("imaging_queue_depth", "Analysis jobs by state", ["state"])
DELIVERIES = Counter(
    "imaging_deliveries_total", "Result deliveries, by target and outcome", ["target", "outcome"]
)
FHIR_REQUESTS = Counter(
    "imaging_fhir_requests_total", "Requests to the FHIR store, by HTTP status", ["status"]
)
