"""OpenTelemetry, behind the `otel` extra (`pip install 'jobreactor[otel]'`: opentelemetry-api).

- **Enqueue**: the W3C `traceparent` of the span active where `enqueue` is called (a web
  request, say) is stored in the job record's `trace` field, so it travels with the job to the
  node (and into Redis with it). No active span, or no opentelemetry-api: the field stays
  unset and costs nothing on the wire (records omit default fields).
- **Node**: an attempt of a traced job runs in a span `jobreactor.run <name>` (kind CONSUMER),
  a child of the enqueuer's span, with attributes `jobreactor.job.id`, `.name`, `.attempt`,
  `jobreactor.node` and, when it ends, `jobreactor.outcome` (success, retry, failed,
  cancelled). The job body runs with that span current (for `async def` jobs and plain jobs
  on the loop), so spans the job makes nest under it.
- **App**: the final report's feedback runs in a span `jobreactor.feedback <name>`, a child of
  the same enqueuer's span: one trace from the request to the node's run and back.

Spans go to whatever tracer provider the process configured (opentelemetry-sdk, or the
`opentelemetry-instrument` agent); a node configures its own, e.g. in a file of its
`job_directory`. Without opentelemetry-api every function here returns at its first line.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # the `otel` extra
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import propagation as _propagation
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is installed in dev
    _trace = None  # type: ignore[assignment]

__all__ = ["ENABLED", "end_run", "feedback_span", "run_span", "traceparent", "use_span"]

ENABLED = _trace is not None
_PROPAGATOR: Any = TraceContextTextMapPropagator() if ENABLED else None
_TRACER = "jobreactor"


def _context_reader() -> Any:
    """The fastest way to the current OpenTelemetry context: the runtime's ContextVar
    (about 0.1 µs, what every enqueue pays with the extra installed), else the public API
    (several times that)."""
    if not ENABLED:
        return None
    var = getattr(getattr(_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(var, contextvars.ContextVar):
        return var.get
    return _context.get_current


_current_context = _context_reader()
_SPAN_KEY: Any = _propagation._SPAN_KEY if ENABLED else None


def traceparent() -> str | None:
    """The caller's active span as a W3C traceparent, or None (no span, or no otel)."""
    if not ENABLED:
        return None
    span = _current_context().get(_SPAN_KEY)  # the usual case, no span: one dict lookup
    if span is None or not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def _parent(trace: object) -> Any:
    """The context a traceparent names; an empty one for anything malformed (peer data)."""
    if type(trace) is not str or len(trace) > 128:
        trace = ""
    return _PROPAGATOR.extract({"traceparent": trace})


def run_span(trace: str | None, job_id: str, name: str, attempt: int, node: str) -> Any:
    """A started span for one attempt of a traced job (None: not traced, or no otel)."""
    if trace is None or not ENABLED:
        return None
    return _trace.get_tracer(_TRACER).start_span(
        f"jobreactor.run {name}",
        context=_parent(trace),
        kind=_trace.SpanKind.CONSUMER,
        attributes={
            "jobreactor.job.id": job_id,
            "jobreactor.job.name": name,
            "jobreactor.job.attempt": attempt,
            "jobreactor.node": node,
        },
    )


@contextmanager
def use_span(span: Any) -> Iterator[None]:
    """Make `span` current while the job body starts (tasks created inside inherit it)."""
    if span is None:
        yield
        return
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield
    finally:
        _context.detach(token)


def end_run(holder: Any, outcome: str, error: BaseException | None = None) -> None:
    """End the attempt span `holder.span` with its outcome, and clear it."""
    span, holder.span = holder.span, None
    if span is None:
        return
    span.set_attribute("jobreactor.outcome", outcome)
    if error is not None:
        span.record_exception(error)
    if outcome in ("failed", "retry"):
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, repr(error) if error else outcome))
    span.end()


@contextmanager
def feedback_span(trace: str | None, job_id: str, name: str, outcome: str) -> Iterator[None]:
    """The app hearing a traced job's final outcome (its feedbacks run inside)."""
    if trace is None or not ENABLED:
        yield
        return
    tracer = _trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(
        f"jobreactor.feedback {name}",
        context=_parent(trace),
        attributes={
            "jobreactor.job.id": job_id,
            "jobreactor.job.name": name,
            "jobreactor.outcome": outcome,
        },
    ):
        yield
