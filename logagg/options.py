"""Command-line options made from a settings model, so that each setting is declared once.

Every field becomes `--field-name`, with the field's description as its help, its default
shown and its `LOGAGG_*` variable named. Only what was typed on the command line goes to
the model: the rest is left to pydantic-settings, which reads the environment, then the
defaults, as it does without a command line. Secrets are never flags: a command line is
visible to every user of the machine (`ps`, /proc/<pid>/cmdline).
"""

from __future__ import annotations

import functools
import inspect
import os
import types
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
)

import typer
from pydantic import PlainSerializer, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)
P = ParamSpec("P")
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY


def with_settings(
    model: type[S], *, renamed: Mapping[str, str] | None = None
) -> Callable[[Callable[Concatenate[S, P], None]], Callable[..., None]]:
    """Give a command one option per setting of `model` and call it with the settings built.

    The command's first parameter receives the settings; its other parameters stay its own
    options. `renamed` maps a field to its flag where that is not `--field-name`.
    """

    def decorate(command: Callable[Concatenate[S, P], None]) -> Callable[..., None]:
        settings = _fields(model)
        flags = {
            name: _flag_names(name, field, (renamed or {}).get(name)) for name, field in settings
        }
        own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]

        @functools.wraps(command)
        def run(typer_context: typer.Context, **values: Any) -> None:
            parsed = {name: values.pop(name) for name in flags}
            given = {k: v for k, v in parsed.items() if _from_command_line(typer_context, k)}
            cast(Callable[..., None], command)(_build(model, given, flags), **values)

        options = [
            inspect.Parameter(
                name,
                KEYWORD_ONLY,
                default=_shown_default(field),
                annotation=Annotated[
                    list[str] | None if _repeatable(field) else _option_type(field.annotation),
                    typer.Option(*flags[name], help=_help_text(model, name, field)),
                ],
            )
            for name, field in settings
        ]
        context = inspect.Parameter("typer_context", KEYWORD_ONLY, annotation=typer.Context)
        params = [context, *options, *(p.replace(kind=KEYWORD_ONLY) for p in own)]
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


def _repeatable(field: FieldInfo) -> bool:
    """A field marked `json_schema_extra={"repeatable": True}` is a flag given once per
    item (its environment variable stays one text the model parses)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("repeatable") is True


def _from_command_line(context: typer.Context, name: str) -> bool:
    """Whether the value came from the command line, not the option's shown default.

    By the source's name: Typer's `ParameterSource` is click's, or its own copy of it."""
    source = context.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _fields(model: type[BaseSettings]) -> list[tuple[str, FieldInfo]]:
    """The model's settings that can be flags, its own before those it inherits."""
    order = [name for cls in model.__mro__ for name in vars(cls).get("__annotations__", {})]
    return [
        (name, model.model_fields[name])
        for name in dict.fromkeys(order)
        if name in model.model_fields and _option_type(model.model_fields[name].annotation)
    ]


def _flag_names(name: str, field: FieldInfo, flag: str | None) -> tuple[str]:
    flag = flag or "--" + name.replace("_", "-")
    if _value_type(field.annotation) is bool:
        return (f"{flag}/--no-{flag[2:]}",)
    return (flag,)


def _option_type(annotation: Any) -> Any:
    """The type the command line parses, None for a secret; a flag left out is None."""
    kind = _value_type(annotation)
    return None if kind is SecretStr else kind | None


def _value_type(annotation: Any) -> Any:
    """The field's type without None, when the command line can parse it; else text, which
    the model parses as it parses the environment (a list comma-separated, a store URL)."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else str
    if annotation in (str, int, float, bool, Path, SecretStr) or get_origin(annotation) is Literal:
        return annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Enum) else str


def _shown_default(field: FieldInfo) -> Any:
    """The default `--help` shows, written as the model writes it; a computed default is
    described in the help instead."""
    if field.default_factory is not None:
        return None
    value = field.default
    for serializer in (m for m in field.metadata if isinstance(m, PlainSerializer)):
        value = cast(Callable[[Any], Any], serializer.func)(value)
    if _repeatable(field):
        return [str(item) for item in value] or None
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or None
    return value


def _env_name(model: type[BaseSettings], name: str) -> str:
    return f"{model.model_config.get('env_prefix', '')}{name}".upper()


def _help_text(model: type[BaseSettings], name: str, field: FieldInfo) -> str:
    return f"{field.description} (env {_env_name(model, name)})"


def _build(model: type[S], given: dict[str, Any], flags: Mapping[str, tuple[str]]) -> S:
    """The settings; a bad value exits 2 naming the flag or variable it came from."""
    try:
        return model(**given)
    except ValidationError as exc:
        reasons = []
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else ""
            if name in given:
                where = flags[name][0].partition("/")[0]
            elif _env_name(model, name) in os.environ:
                where = _env_name(model, name)
            else:
                where = name
            reasons.append(f"{where}: {error['msg']}" if where else error["msg"])
        typer.echo(f"error: {'; '.join(reasons)}", err=True)
        raise typer.Exit(2) from None


def as_environment(settings: BaseSettings) -> dict[str, str]:
    """The settings as `LOGAGG_*` variables, for child processes (secrets are inherited)."""
    names = {name for name, _ in _fields(type(settings))}
    env = {}
    for name, value in settings.model_dump(mode="json", include=names).items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if value is not None:
            env[_env_name(type(settings), name)] = str(value)
    return env
