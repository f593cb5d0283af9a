"""The server's Prometheus metrics, on a registry of its own (never the process-wide default registry,
so two servers in one process, as in the tests, do not collide).

Latencies are measured where the client sees them: from the request's arrival at the handler to its first
token (TTFT), between two tokens of one request (ITL), and to its last (end-to-end). The engine's state
(running, waiting, media-cache hits) is pushed by the worker thread after every step.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, labels = self.registry, ["model_name"]

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels + list(extra), registry=r)

        self.ttft = Histogram(
            "owl3_time_to_first_token_seconds",
            "Time from request arrival to the first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "owl3_inter_token_latency_seconds",
            "Time between two tokens of one request.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "owl3_e2e_request_latency_seconds",
            "Time from request arrival to its end.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.running = Gauge(
            "owl3_num_requests_running", "Requests in the engine's running batch.", labels, registry=r
        )
        self.waiting = Gauge(
            "owl3_num_requests_waiting", "Requests waiting for a slot in the engine.", labels, registry=r
        )
        self.prompt_tokens = counter("owl3_prompt_tokens", "Prompt tokens of answered requests.")
        self.generation_tokens = counter("owl3_generation_tokens", "Tokens generated.")
        self.images = counter("owl3_images", "Images in requests.")
        self.video_frames = counter("owl3_video_frames", "Video frames sampled from requests' videos.")
        self.cache_hits = counter(
            "owl3_media_cache_hits",
            "Images and frames whose visual features came from the engine's media cache.",
        )
        self.prefix_tokens = counter(
            "owl3_prefix_cache_tokens_reused",
            "Prompt tokens whose keys/values came from an earlier request (the prefix cache).",
        )
        self.aborted = counter("owl3_requests_aborted", "Requests aborted: client gone or server stopping.")
        self.finished = counter(
            "owl3_request_success", "Requests answered, by finish reason.", ("finished_reason",)
        )
        self.rejected = counter(
            "owl3_requests_rejected", "Requests refused before generation, by status.", ("status",)
        )
        self.name = model_name
        self._cache_hits_seen = 0
        self._prefix_tokens_seen = 0

        for metric in (
            self.ttft,
            self.itl,
            self.e2e,
            self.running,
            self.waiting,
            self.prompt_tokens,
            self.generation_tokens,
            self.images,
            self.video_frames,
            self.cache_hits,
            self.prefix_tokens,
            self.aborted,
        ):
            metric.labels(model_name)  # every series shows from the start, at 0

    def engine_state(self, running: int, waiting: int, cache_hits: int, prefix_tokens: int = 0) -> None:
        """Called by the worker thread after each engine step (the last two: the engine's totals)."""
        self.running.labels(self.name).set(running)
        self.waiting.labels(self.name).set(waiting)
        if cache_hits > self._cache_hits_seen:
            self.cache_hits.labels(self.name).inc(cache_hits - self._cache_hits_seen)
            self._cache_hits_seen = cache_hits
        if prefix_tokens > self._prefix_tokens_seen:
            self.prefix_tokens.labels(self.name).inc(prefix_tokens - self._prefix_tokens_seen)
            self._prefix_tokens_seen = prefix_tokens

    def render(self) -> bytes:
        return generate_latest(self.registry)
