"""Base class for typed config sections: unknown keys are errors, and errors name the dotted field."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from components.errors import UserError


class Section(BaseModel):
    """A config section: rejects unknown keys and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the first bad dotted field, e.g. `train.lr_g: Input should be greater than 0`."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    msg = first["msg"].removeprefix("Value error, ")
    # Cross-field validators raise "field: message"; move the field into the dotted path.
    field, sep, rest = msg.partition(": ")
    if first["type"] == "value_error" and sep and field.isidentifier():
        loc, msg = [*loc, field], rest
    path = ".".join([prefix, *loc] if prefix else loc)
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check spelling; see configs/default.yaml for the valid keys)"
    return f"{path}: {msg}"


def build(cls: type[Section], data: dict, prefix: str = "") -> Section:
    """Validate `data` into `cls`, turning pydantic's report into a one-line UserError."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise UserError(f"invalid config: {describe_validation_error(err, prefix)}") from None
