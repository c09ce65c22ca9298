"""Engines' and GPU exporters' Prometheus metrics, parsed with ``prometheus_client``'s parser.

* vLLM's ``/metrics`` (``vllm:`` prefix, names as in vLLM's metrics design doc):
  requests running and waiting, KV-cache usage (``vllm:kv_cache_usage_perc``, or
  ``vllm:gpu_cache_usage_perc`` before the V1 engine), the time-to-first-token and
  inter-token latency histograms (``vllm:inter_token_latency_seconds``, or
  ``vllm:time_per_output_token_seconds``), and the token counters from which two
  scrapes give a generation throughput.
* NVIDIA's DCGM exporter (its default counters, ``DCGM_FI_DEV_*``), one
  :class:`DcgmGpu` per ``(Hostname, gpu)``: the GPU telemetry of other machines.

A missing metric is ``None``, not an error (an engine without one of them).

Example:
    >>> vm = parse_vllm(scrape("http://127.0.0.1:8000/metrics"))  # doctest: +SKIP
    >>> vm.requests_running, vm.kv_cache_usage  # doctest: +SKIP
    (3.0, 0.41)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import EndpointResponseError, EndpointUnreachableError

MiB = 2**20


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram summed over its label sets: cumulative buckets ``(upper bound s, count)``."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum_s: float

    @property
    def mean_s(self) -> float | None:
        return self.sum_s / self.count if self.count else None

    def quantile_s(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (Prometheus' bucket resolution)."""
        if not self.count:
            return None
        target = q * self.count
        for upper, cum in self.buckets:
            if cum >= target:
                return upper
        return None


@dataclass(frozen=True)
class VllmMetrics:
    """One scrape of a vLLM server (summed over its models and engines).

    Attributes:
        requests_running, requests_waiting: gauges, requests.
        kv_cache_usage: fraction of KV-cache blocks in use, 0 to 1.
        prompt_tokens_total, generation_tokens_total: counters since start.
        ttft: time-to-first-token histogram; itl: inter-token latency histogram.
        time_s: when it was scraped (``time.time()``).
    """

    time_s: float
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage: float | None
    prompt_tokens_total: float | None
    generation_tokens_total: float | None
    ttft: Histogram | None
    itl: Histogram | None

    def generation_tokens_per_s(self, previous: VllmMetrics) -> float | None:
        """Generation throughput between two scrapes (counter increase over elapsed time)."""
        if self.generation_tokens_total is None or previous.generation_tokens_total is None:
            return None
        dt = self.time_s - previous.time_s
        delta = self.generation_tokens_total - previous.generation_tokens_total
        return delta / dt if dt > 0 and delta >= 0 else None


@dataclass(frozen=True)
class DcgmGpu:
    """One GPU as a DCGM exporter reports it (units converted: bytes, percent, W, degrees C, MHz).

    Attributes:
        host: the exporter's ``Hostname`` label; gpu: its ``gpu`` index label; uuid: ``UUID``.
    """

    host: str
    gpu: str
    uuid: str | None
    model_name: str | None
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    memory_copy_utilization_percent: float | None
    power_w: float | None
    temperature_c: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    extra: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    @property
    def memory_total_bytes(self) -> int | None:
        if self.memory_used_bytes is None or self.memory_free_bytes is None:
            return None
        return self.memory_used_bytes + self.memory_free_bytes


def _families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _gauge(fams: dict[str, Any], *names: str) -> float | None:
    for name in names:
        # prometheus_client strips "_total" from counter family names.
        fam = fams.get(name) or fams.get(name.removesuffix("_total"))
        if fam is not None:
            values = [s.value for s in fam.samples if s.name in (name, name + "_total", fam.name)]
            if values:
                return float(sum(values))
    return None


def _histogram(fams: dict[str, Any], *names: str) -> Histogram | None:
    for name in names:
        fam = fams.get(name)
        if fam is None:
            continue
        buckets: dict[float, float] = {}
        count = total = 0.0
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_count"):
                count += s.value
            elif s.name.endswith("_sum"):
                total += s.value
        return Histogram(tuple(sorted(buckets.items())), count, total)
    return None


def parse_vllm(text: str, *, time_s: float | None = None) -> VllmMetrics:
    """Parse a vLLM ``/metrics`` page.

    Raises:
        ValueError: text that is not Prometheus' exposition format.
    """
    fams = _families(text)
    return VllmMetrics(
        time_s=time.time() if time_s is None else time_s,
        requests_running=_gauge(fams, "vllm:num_requests_running"),
        requests_waiting=_gauge(fams, "vllm:num_requests_waiting"),
        kv_cache_usage=_gauge(fams, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prompt_tokens_total=_gauge(fams, "vllm:prompt_tokens_total"),
        generation_tokens_total=_gauge(fams, "vllm:generation_tokens_total"),
        ttft=_histogram(fams, "vllm:time_to_first_token_seconds"),
        itl=_histogram(fams, "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    )


# DCGM field -> (DcgmGpu attribute, scale). FB_* are MiB; the rest keep their units.
_DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_percent", 1.0),
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", MiB),
    "DCGM_FI_DEV_FB_FREE": ("memory_free_bytes", MiB),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("memory_copy_utilization_percent", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0),
}


#: Most GPUs one DCGM page may name (an exporter serves one node; an aggregating proxy a rack),
#: and most fields besides :class:`DcgmGpu`'s per GPU (dcgm-exporter's default set has about 40).
MAX_DCGM_GPUS = 512
MAX_DCGM_EXTRA = 256


def parse_dcgm(text: str) -> list[DcgmGpu]:
    """Parse a DCGM exporter's ``/metrics`` page into one record per host and GPU, sorted.

    Fields other than the ones :class:`DcgmGpu` names land in ``extra`` by metric name.

    Raises:
        ValueError: text that is not Prometheus' exposition format, or one naming more than
            :data:`MAX_DCGM_GPUS` GPUs or more than :data:`MAX_DCGM_EXTRA` other fields per GPU
            (an exporter's port on a shared host may be held by anyone: each page is kept in the
            watcher's history and plotted, so its size is bounded here, not only its bytes).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for fam in _families(text).values():
        for s in fam.samples:
            if not s.name.startswith("DCGM_FI_"):
                continue
            host = s.labels.get("Hostname") or s.labels.get("hostname") or ""
            gpu = s.labels.get("gpu", "")
            if (host, gpu) not in rows and len(rows) >= MAX_DCGM_GPUS:
                raise ValueError(f"a DCGM page naming more than {MAX_DCGM_GPUS} GPUs")
            row = rows.setdefault((host, gpu), {"uuid": s.labels.get("UUID"),
                                                "model_name": s.labels.get("modelName"), "extra": {}})
            attr = _DCGM_FIELDS.get(s.name)
            if attr is None:
                if s.name not in row["extra"] and len(row["extra"]) >= MAX_DCGM_EXTRA:
                    raise ValueError(f"a DCGM page with more than {MAX_DCGM_EXTRA} other fields for one GPU")
                row["extra"][s.name] = float(s.value)
            else:
                name, scale = attr
                value = s.value * scale
                row[name] = int(value) if name.endswith("_bytes") else float(value)
    out = []
    for (host, gpu), row in sorted(rows.items(), key=lambda kv: (kv[0][0], _int_or(kv[0][1]))):
        out.append(DcgmGpu(host=host, gpu=gpu, uuid=row["uuid"], model_name=row["model_name"],
                           **{a: row.get(a) for a, _ in _DCGM_FIELDS.values()}, extra=row["extra"]))
    return out


def _int_or(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)


#: Bytes of a /metrics page read (a large vLLM page: ~100 KB).
_MAX_PAGE_BYTES = 16 << 20


def scrape(url: str, *, timeout_s: float = 5.0, endpoint: str | None = None,
           headers: dict[str, str] | None = None) -> str:
    """GET a ``/metrics`` page (with ``headers``: an engine's ``Authorization``).

    Raises:
        EndpointUnreachableError: nothing answers at ``url``.
        EndpointResponseError: it answered with an error status.
    """
    import urllib.error
    import urllib.request

    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (a URL the user configured)
            return resp.read(_MAX_PAGE_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise EndpointResponseError(f"{url} answered HTTP {exc.code}", hint="check that the server exports "
                                    "Prometheus metrics there", status_code=exc.code, url=url,
                                    endpoint=endpoint) from None
    except (urllib.error.URLError, OSError) as exc:
        raise EndpointUnreachableError(f"{url} cannot be reached: {getattr(exc, 'reason', exc)}",
                                       hint="check the URL and that the exporter is running", url=url,
                                       endpoint=endpoint) from None
