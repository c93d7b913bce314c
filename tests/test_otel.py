"""OpenTelemetry (jobreactor/otel.py): one trace from the code that enqueued a job, through the
node process that ran it, back to the feedback in the app. The app records spans with the
SDK's in-memory exporter; the node, a real `jobreactor node` process, configures its own SDK
in a file of its job directory and exports each span as a JSON line to a file we read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jobreactor import Reactor
from jobreactor.errors import JobFailed
from tests.conftest import wait_until

EXPORTER = InMemorySpanExporter()
if not isinstance(trace.get_tracer_provider(), TracerProvider):
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(_provider)

NODE_TRACING = textwrap.dedent(
    """
    import os
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from jobreactor import job

    class FileExporter(SpanExporter):
        def export(self, spans):
            with open(os.environ["JR_TEST_SPANS"], "a") as f:
                for span in spans:
                    f.write(span.to_json(indent=None) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)

    @job("traced")
    async def traced(args):
        with trace.get_tracer("the job").start_as_current_span("inside the job"):
            args["done"] = True
    """
)


def _hex(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def _node_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_one_trace_from_the_request_to_the_node_and_back(
    reactor: Reactor, cli_node: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans_file = tmp_path / "node_spans.jsonl"
    monkeypatch.setenv("JR_TEST_SPANS", str(spans_file))
    (tmp_path / "cli_jobs").mkdir()
    (tmp_path / "cli_jobs" / "tracing.py").write_text(NODE_TRACING)
    cli_node("tracer", ("127.0.0.1", reactor.distributor.address_port()))
    reactor.wait_for_node("tracer", timeout=30)
    EXPORTER.clear()
    seen_in_feedback: list[Any] = []

    def feedback(args: dict[str, Any]) -> None:
        seen_in_feedback.append(trace.get_current_span().get_span_context())

    tracer = trace.get_tracer("the app")
    with tracer.start_as_current_span("POST /checkout") as request:
        handle = reactor.enqueue("traced", {}, success=feedback)
        failing = reactor.enqueue("fail", {"out": str(tmp_path / "out.jsonl")})
    assert handle is not None
    assert failing is not None
    assert handle.result(60)["done"] is True
    with pytest.raises(JobFailed):
        failing.result(60)
    ctx = request.get_span_context()
    trace_id, request_id = _hex(ctx.trace_id, 32), _hex(ctx.span_id, 16)

    def node_spans() -> list[dict[str, Any]]:
        return [s for s in _node_spans(spans_file) if s["name"].startswith("jobreactor.run")]

    wait_until(lambda: len(node_spans()) == 4, 30, "the node's four run spans")
    runs = {(s["name"], s["attributes"]["jobreactor.job.attempt"]): s for s in node_spans()}
    run = runs[("jobreactor.run traced", 1)]
    assert run["context"]["trace_id"] == trace_id
    assert run["parent_id"] == request_id
    assert run["kind"] == "SpanKind.CONSUMER"
    assert run["attributes"] == {
        "jobreactor.job.id": handle.id,
        "jobreactor.job.name": "traced",
        "jobreactor.job.attempt": 1,
        "jobreactor.node": "tracer",
        "jobreactor.outcome": "success",
    }
    inner = [s for s in _node_spans(spans_file) if s["name"] == "inside the job"]
    assert [s["parent_id"] for s in inner] == [run["context"]["span_id"]]
    # the node config says max_attempt = 3: two retries, then failed for good
    outcomes = [
        runs[("jobreactor.run fail", n)]["attributes"]["jobreactor.outcome"] for n in (1, 2, 3)
    ]
    assert outcomes == ["retry", "retry", "failed"]
    assert all(runs[("jobreactor.run fail", n)]["parent_id"] == request_id for n in (1, 2, 3))

    wait_until(lambda: bool(seen_in_feedback), 10, "the feedback")
    feedbacks = [s for s in EXPORTER.get_finished_spans() if s.name == "jobreactor.feedback traced"]
    assert len(feedbacks) == 1
    back = feedbacks[0]
    assert back.context.trace_id == ctx.trace_id
    assert back.parent is not None
    assert back.parent.span_id == ctx.span_id
    assert back.attributes is not None
    assert back.attributes["jobreactor.outcome"] == "success"
    assert seen_in_feedback[0].span_id == back.context.span_id  # the feedback ran inside it


def test_no_span_no_trace_field(reactor: Reactor) -> None:
    """Enqueued outside any span: the record carries nothing more on the wire."""
    handle = reactor.enqueue("nobody", {})
    assert handle is not None

    async def record() -> Any:
        return reactor.distributor.dispatcher.get(handle.id)

    found = reactor.call(record, timeout=10)
    assert found.trace is None
    assert "trace" not in found.to_dict()


def test_without_the_extra_otel_is_off() -> None:
    """opentelemetry-api not importable: jobreactor imports, enqueues and runs, tracing off."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
        from jobreactor import Reactor, Registry, otel
        assert otel.ENABLED is False and otel.traceparent() is None
        registry = Registry()
        registry.job("ok")(lambda args: None)
        r = Reactor(logger_method=None)
        r.run()
        port = r.start_distributor("127.0.0.1", 0)[1]
        r.start_node("n", "memory", [("127.0.0.1", port)], registry=registry)
        r.wait_for_node("n", timeout=20)
        r.enqueue("ok", {}).result(20)
        r.stop(timeout=10)
        print("ran")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran"
