"""How much one run does: the default plan, `--quick`, and `--e2e-configs`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does (default vs --quick)."""

    quick: bool
    limit_seconds: float
    sqs_limit_messages: int
    ingest_levels: tuple[int, ...]
    ingest_seconds: float
    ingest_warmup: float
    e2e_jobs: int
    e2e_configs: tuple[tuple[int, int], ...]  # (worker processes, concurrency each)
    pipeline_config: tuple[int, int]
    latency_jobs: int
    latency_pause: float
    celery_configs: tuple[tuple[str, int], ...]  # (pool, concurrency)
    celery_enqueue_procs: int = 2
    celery_jobs: int = 0  # 0: as many as e2e_jobs
    steady_warmup: float = 3.0  # s after the first job finished, not counted
    steady_seconds: float = 10.0  # the counted window of a steady-state run
    network: str = "loopback"  # or "cloud" / "latency A/B ms": what the proxies add

    @classmethod
    def make(cls, quick: bool, jobs: int | None = None) -> Plan:
        """The quick or the full plan; `jobs` overrides the end-to-end job count."""
        if quick:
            return cls(
                quick=True,
                limit_seconds=2.0,
                sqs_limit_messages=2000,
                ingest_levels=(1, 8, 32, 128),
                ingest_seconds=3.0,
                ingest_warmup=1.0,
                e2e_jobs=jobs or 500,
                e2e_configs=((1, 8), (2, 32)),
                pipeline_config=(2, 32),
                latency_jobs=20,
                latency_pause=0.1,
                celery_configs=(("prefork", 4),),
                steady_warmup=2.0,
                steady_seconds=5.0,
            )
        return cls(
            quick=False,
            limit_seconds=5.0,
            sqs_limit_messages=5000,
            ingest_levels=(1, 8, 32, 128),
            ingest_seconds=10.0,
            ingest_warmup=2.0,
            e2e_jobs=jobs or 5000,
            e2e_configs=((1, 8), (1, 32), (2, 32), (4, 32)),
            pipeline_config=(2, 32),
            latency_jobs=100,
            latency_pause=0.1,
            # prefork with -c = CPU count is Celery's default; 4 matches jobq's 4 processes.
            celery_configs=(("prefork", 2), ("prefork", 4)),
        )

    def for_network(self, name: str) -> Plan:
        """This plan for a network profile: behind latency, what issue 19 asks for, short."""
        if name == "loopback":
            return dataclasses.replace(self, network=name)
        return dataclasses.replace(
            self,
            network=name,
            limit_seconds=2.0,
            sqs_limit_messages=600,  # one caller at 20 ms: ~200 msgs/s batched, ~40 one by one
            ingest_levels=(32,),
            e2e_jobs=min(self.e2e_jobs, 3000),
            e2e_configs=((1, 16), (1, 64), (1, 256), (4, 64)),
            pipeline_config=(1, 64),
            latency_jobs=min(self.latency_jobs, 50),
            celery_configs=(("prefork", 4),),
            celery_jobs=600 if self.quick else 1500,
        )

    def with_e2e_configs(self, spec: str) -> Plan:
        """This plan with end-to-end configs from "PROCSxCONCURRENCY,..." (ValueError if bad)."""
        try:
            configs = tuple((int(p), int(c)) for p, c in (x.split("x") for x in spec.split(",")))
        except ValueError:
            raise ValueError(f"expected e.g. 1x8,2x32, got {spec!r}") from None
        if any(p < 1 or c < 1 for p, c in configs):
            raise ValueError("process counts and concurrencies must be >= 1")
        return dataclasses.replace(self, e2e_configs=configs)
