"""Property-based: whatever a user types as overrides or puts in a config file, the result
is a valid Config or a ConfigError, never another exception; and a valid Config survives the
round trip through its YAML file unchanged (what ``--resume`` compares)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnr.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_keys,
    from_dict,
    parse_override,
    validate,
)

KEYS = config_keys()
SECTIONS = [f.name for f in dataclasses.fields(Config)]

#: Values that have broken parsers: YAML oddities, non-finite and huge numbers, dates.
NASTY = [
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "-1e400",
    "1e-400",
    str(10**30),
    str(-(10**30)),
    "2024-13-45",
    "2024-02-30",
    "2024-01-01 25:61:00",
    "[" * 200,
    "[" * 200 + "]" * 200,
    "{a: [1, {b: }}",
    "!!python/object/apply:os.system [true]",
    "!!binary aGk=",
    "&a [*a]",
    "*undefined",
    "~",
    "null",
    "0x1F",
    "0o17",
    "1_000",
    "- a",
    ": x",
    "'unclosed",
    "%YAML 1.2",
    "---",
    "...",
    "?",
    "|",
    "yes",
    "off",
    "=",
    "a=b=c",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["vgg16", "resnet18", "dnr", "lwm", "admm", "channel", "npz", "cuda:1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["lwm", "dnr"])), inner),
    ),
    max_leaves=8,
)


def _yaml_text(value) -> str:
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    except (yaml.YAMLError, ValueError, OverflowError):
        return repr(value)


raw_values = st.one_of(
    values.map(_yaml_text), st.sampled_from(NASTY), st.text(max_size=20), st.just("")
)
mutated_keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(SECTIONS),
    st.tuples(st.sampled_from(KEYS), st.integers(0, 12), st.characters()).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    ),
    st.text(max_size=16),
)
overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", mutated_keys, raw_values), st.text(max_size=20)),
    max_size=4,
)

pytestmark = pytest.mark.slow  # hundreds of examples per test

#: DNR_FUZZ_EXAMPLES=5000 for a longer hunt than the suite's.
FUZZ = settings(
    max_examples=int(os.environ.get("DNR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _config_or_error(build: Callable[[], Config]) -> Config | None:
    """The config ``build`` makes, or None when it raises a ConfigError that says something."""
    try:
        return build()
    except ConfigError as err:
        message = str(err)
    assert message.strip()
    return None


def _round_trips(cfg: Config | None) -> None:
    if cfg is None:  # refused, with a message
        return
    validate(cfg)  # a valid config stays valid
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)  # what config.yaml holds
    again = from_dict(yaml.safe_load(text))
    assert again.to_dict() == cfg.to_dict()


@FUZZ
@given(overrides)
def test_overrides_give_a_config_or_a_config_error(texts: list[str]) -> None:
    _round_trips(_config_or_error(lambda: apply_overrides(Config(), texts)))


@FUZZ
@given(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), raw_values))
def test_every_key_with_any_value(text: str) -> None:
    def build() -> Config:
        assert parse_override(text)[0] in KEYS
        return apply_overrides(Config(), [text])

    _round_trips(_config_or_error(build))


trees = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8)),
    st.one_of(
        st.dictionaries(
            st.one_of(st.sampled_from([k.split(".")[1] for k in KEYS]), st.text(max_size=8)),
            values,
            max_size=4,
        ),
        values,
    ),
    max_size=4,
)


@FUZZ
@given(trees)
def test_config_files_give_a_config_or_a_config_error(tree) -> None:
    _round_trips(_config_or_error(lambda: from_dict(tree)))
