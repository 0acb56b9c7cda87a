"""One settings object for every labelloop process, read from ``LABELLOOP_*`` variables.

It is validated once at start: a process with settings that cannot work stops with a clear message
instead of failing later, and outside development it refuses the well-known default secrets.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from labelloop.errors import ConfigError

DEFAULT_CLUSTER_TOKEN = "dev-cluster-token"  # noqa: S105 - refused outside development
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
MiB = 1024 * 1024
#: Shortest API token accepted: an empty or short one would let anyone in (or guess it).
MIN_API_TOKEN_CHARS = 16


class Settings(BaseSettings):
    """Everything machine- or deployment-specific. Environment variables use the prefix ``LABELLOOP_``."""

    model_config = SettingsConfigDict(env_prefix="LABELLOOP_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("labelloop-data")
    database_url: str | None = None
    import_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    jobs: Literal["local", "celery"] = "local"
    local_workers: int = Field(default=2, ge=1, le=64)
    #: API processes of ``labelloop serve`` (its ``--processes``). "auto": two where the server
    #: runs local jobs on Linux with two cores or more (one core answers while the other computes:
    #: Label Studio's /predict and 30 annotators measured in docs/BENCHMARKS.md), else one.
    api_processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    #: How long the local worker processes may take to start (imports) before the server gives up.
    local_start_timeout_s: float = Field(default=120.0, gt=0)
    broker_url: str = DEFAULT_BROKER_URL
    #: CA file an ``amqps://`` broker's certificate chain is verified by; None: the system's CAs.
    broker_ca: Path | None = None
    result_backend: str = "rpc://"
    predict_timeout_s: float = Field(default=10.0, gt=0)
    #: Cluster mode: a predict request of at least twice this many items is split into chunks
    #: of about this size, answered by several inference processes in parallel.
    predict_chunk_items: int = Field(default=32, ge=1)
    #: Hard time limit of a training job on a Celery worker; below RabbitMQ's default consumer
    #: time-out (30 min), which must stay above it (docs/WORKERS.md).
    train_time_limit_s: int = Field(default=1500, gt=0)
    #: Hard time limit of featurize and re-prediction jobs on Celery workers.
    job_time_limit_s: int = Field(default=600, gt=0)
    #: Quorum queues (RabbitMQ 3.8+) survive a node loss; "classic" for brokers without them.
    broker_queue_type: Literal["quorum", "classic"] = "quorum"
    #: Deliveries of one message before the broker dead-letters it (a poison job cannot loop).
    broker_delivery_limit: int = Field(default=5, ge=1, le=100)

    #: Hosts (names) and networks (``10.0.0.0/8``, ``127.0.0.1``) that http(s) links may reach
    #: although they are loopback, private, link-local or otherwise not public; comma-separated.
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fetch_max_bytes: int = Field(default=20 * MiB, gt=0)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    max_request_bytes: int = Field(default=32 * MiB, gt=0)
    max_items_per_request: int = Field(default=10_000, gt=0)
    model_cache_bytes: int = Field(default=512 * MiB, gt=0)
    #: Model versions kept on disk besides the served one and the best (cross-validated accuracy):
    #: the newest this many; older ones are pruned after each training (labelloop.loop.retention).
    keep_versions: int = Field(default=5, ge=0, le=10_000)
    #: Threads that run the API's routes at once (anyio's default is 40): fewer threads compete
    #: for the interpreter lock with the one that holds the store's write lock (docs/BENCHMARKS.md).
    api_threads: int = Field(default=40, ge=1, le=1000)
    #: Unlabelled items a training reads besides the labelled ones, for learners that learn from
    #: the pool (TF-IDF vocabulary, label spreading, density weights): the first this many of the
    #: task's stable random order (``Item.lottery``, keyed by its salt), so that a training's
    #: memory grows with the labels, not the pool (labelloop.loop.training).
    train_pool_sample: int = Field(default=20_000, ge=1)
    #: Items per background re-prediction job after a promotion (labelloop.loop.rescoring).
    rescore_chunk: int = Field(default=5_000, ge=1, le=1_000_000)
    #: The head of the ranking that every promotion rescores first, most uncertain first by the
    #: freshest scores (what ``/next`` is about to hand out); the rest of the pool (the tail)
    #: follows stalest first, where the last promotion's tail stopped, until a newer promotion
    #: stops it (labelloop.loop.rescoring).
    rescore_head: int = Field(default=50_000, ge=0)
    #: How long an item ``/next`` hands to an annotator stays theirs (no one else gets it).
    reservation_lease_s: float = Field(default=600.0, gt=0, le=7 * 86400)
    #: The image backbone of photo learners: "efficientnet-lite0" (in the default install),
    #: "none", or a JSON object naming a TorchScript/ONNX file (labelloop.learners.backbones).
    image_backbone: str = "efficientnet-lite0"
    #: Threads PyTorch uses per process for embeddings and fine-tuning (unset: PyTorch's default).
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    #: Where the sentence encoder's ONNX graphs are exported to once (unset: ``<data_dir>/encoders``);
    #: several data roots on one machine (tests, benches) may share one.
    encoder_dir: Path | None = None
    #: Distributed fine-tuning (labelloop.distributed): in cluster mode a training job's fits run
    #: over every live train worker (False: in the job's own process). Embedded mode runs this many
    #: ranks as processes of its machine (1: in the job's own process).
    train_distributed: bool = True
    train_local_ranks: int = Field(default=1, ge=1, le=64)
    #: The address this machine's ranks and rendezvous store are reached at by the other train
    #: machines (the agent sets the machine's IP), and the ports a job's c10d store may take.
    train_rdzv_host: str = "127.0.0.1"
    train_rdzv_ports: str = "29400-29499"
    #: Epoch checkpoints kept per fit (the newest ones), re-formations of a world that lost a rank,
    #: and how long a rank waits for a collective or the rendezvous before it gives up.
    train_keep_checkpoints: int = Field(default=2, ge=1, le=1000)
    train_world_restarts: int = Field(default=3, ge=0, le=100)
    train_rank_timeout_s: float = Field(default=120.0, gt=0)
    #: A checkpoint every this many training steps besides each epoch's end (0: at each epoch's
    #: end only), with the sampler's position: a resumed fit goes on from the middle of an epoch.
    train_checkpoint_steps: int = Field(default=0, ge=0, le=1_000_000)

    api_token: SecretStr | None = None
    #: Only the agent, the coordinator and ``labelloop cluster`` need it (labelloop.cluster.security
    #: reads it, or LABELLOOP_CLUSTER_TOKEN_FILE); workers and services run without it.
    cluster_token: SecretStr | None = None
    labelstudio_url: str | None = None
    labelstudio_token: SecretStr | None = None

    log_level: str = "INFO"

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        """``LABELLOOP_IMPORT_ROOTS`` is colon-separated, like ``PATH``."""
        if isinstance(value, str):
            return [Path(part) for part in value.split(":") if part]
        return value

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        """Unset means "no token"; set means a real secret, never an empty or short one."""
        if token is None:
            return None
        value = token.get_secret_value()
        if not value.strip():
            raise ValueError(
                "LABELLOOP_API_TOKEN is set but empty; unset it to run without a token, "
                f"or give a secret of at least {MIN_API_TOKEN_CHARS} characters"
            )
        if len(value) < MIN_API_TOKEN_CHARS or value != value.strip():
            raise ValueError(
                f"LABELLOOP_API_TOKEN must be at least {MIN_API_TOKEN_CHARS} characters "
                "without surrounding spaces (e.g. the output of `openssl rand -hex 16`)"
            )
        return token

    @field_validator("fetch_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """``LABELLOOP_FETCH_ALLOW_HOSTS`` is comma-separated."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment != "development":
            token = self.cluster_token
            if token is not None and token.get_secret_value() == DEFAULT_CLUSTER_TOKEN:
                raise ValueError(
                    "LABELLOOP_CLUSTER_TOKEN is the development default; set a secret of your own"
                )
            if self.jobs == "celery" and "guest:guest@" in self.broker_url:
                raise ValueError(
                    "LABELLOOP_BROKER_URL uses RabbitMQ's default guest account; "
                    "create a user of your own outside development"
                )
        return self

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'labelloop.db'}"

    @cached_property
    def allowed_roots(self) -> tuple[Path, ...]:
        """Folders below which local paths may be read: the import roots only (never the data
        root, which holds the store, the Label Studio tokens and every task's uploads)."""
        return tuple(dict.fromkeys(p.expanduser().resolve() for p in self.import_roots))


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; a bad value becomes a :class:`ConfigError` with its reason."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {reasons}") from None
