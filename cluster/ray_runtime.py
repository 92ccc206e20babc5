"""Start or join Ray: a local instance on a laptop, or a running cluster (``address='auto'``).

Sets the environment the project needs before Ray starts: usage stats off, Serve's
queue-length probe deadline short (quiet and responsive on small machines). Token auth is
left as Ray 2.60 sets it (on by default, read once when ``ray`` is imported); the CLI needs
``RAY_AUTH_MODE=token`` for ``ray status`` against such a cluster.
"""

from __future__ import annotations

import os

RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1",
    "RAY_DEDUP_LOGS": "1",
}


def ray_environment() -> dict[str, str]:
    """Variables every Ray process of the pipeline gets (also passed to workers)."""
    env = {key: os.environ.get(key, value) for key, value in RAY_ENV_DEFAULTS.items()}
    for passthrough in ("RAY_AUTH_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OTEL_SERVICE_NAME",
                        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
                        "JUDO_TRACE_FILE"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


def start_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray; return True when this call started a local instance (so it should stop it)."""
    for key, value in ray_environment().items():
        os.environ.setdefault(key, value)
    import ray  # after the defaults above: Ray reads some of them once, when it is imported

    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address  # Ray turns 127.0.0.1 into the node's IP: compare ports
        port = current.rsplit(":", 1)[-1]
        if address and address != "auto" and "://" not in address and address.rsplit(":", 1)[-1] != port:
            raise RuntimeError(f"this process is already connected to the Ray cluster at {current}, not {address}")
        return False
    runtime_env = {"env_vars": ray_environment()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
             configure_logging=True, logging_level="WARNING")
    return True


def stop_ray() -> None:
    import ray  # same module start_ray imported; kept here so importing this module never loads Ray

    if ray.is_initialized():
        ray.shutdown()
