"""Settings of the commands that live here (`up`, `tail`, `stats`), apart from the code
that runs them, so that `logagg --help` loads neither the supervisor nor the HTTP client."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.settings import BridgeSettings
from publisher.settings import DEFAULT_API_URL, SidecarUrl


class UpSettings(BridgeSettings):
    host: str = Field(default="127.0.0.1", description="HTTP sidecar address")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP sidecar port")
    data_dir: Path = Field(
        default=Path("data"), description="Where a broker started here keeps its data"
    )


class ViewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOGAGG_", extra="forbid", defer_build=True)

    api_url: SidecarUrl = Field(
        default=DEFAULT_API_URL, description="The sidecar, http://host:port"
    )
    # LOGAGG_API_TOKEN, as the sidecar has it; environment only, never a flag.
    api_token: SecretStr | None = None
