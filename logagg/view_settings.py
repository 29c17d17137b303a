"""Settings for `logagg tail` and `logagg stats`, apart from their HTTP client so that
`logagg --help` does not load it."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from publisher.settings import DEFAULT_API_URL, ApiUrl


class ViewSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOGAGG_", extra="forbid")

    api_url: ApiUrl = Field(default=DEFAULT_API_URL, description="The sidecar, http://host:port")
    # LOGAGG_API_TOKEN, as the sidecar has it; environment only, never a flag.
    api_token: SecretStr | None = None
