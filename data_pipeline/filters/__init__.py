"""Document filters: language ID, Gopher quality and repetition, C4, URL blocklist.

A filter configuration is an ordered mapping ``{filter_name: {option: value}}`` (a YAML
file for ``gpt-data filter --config``, or the ``filter`` step of a recipe); filters run
in that order and the first rule a document breaks removes it. Every option is a field
of the filter's options dataclass; an unknown name is a `UserError`.
"""
from __future__ import annotations

from common.errors import UserError
from common.options import options_from_config
from data_pipeline.filters.base import Filter
from data_pipeline.filters.c4 import C4Filter, C4Options
from data_pipeline.filters.gopher import (GopherQuality, GopherQualityOptions, GopherRepetition,
                                          GopherRepetitionOptions)
from data_pipeline.filters.language import LanguageFilter, LanguageOptions
from data_pipeline.filters.url import UrlBlocklist, UrlOptions

# name -> (filter class, its options dataclass)
FILTERS: dict[str, tuple[type[Filter], type]] = {
    "url": (UrlBlocklist, UrlOptions),
    "language": (LanguageFilter, LanguageOptions),
    "gopher_repetition": (GopherRepetition, GopherRepetitionOptions),
    "gopher_quality": (GopherQuality, GopherQualityOptions),
    "c4": (C4Filter, C4Options),
}
# datatrove's / FineWeb's order: cheap and broad first.
DEFAULT_CONFIG: dict[str, dict] = {"language": {}, "gopher_repetition": {}, "gopher_quality": {}, "c4": {}}


def build_filters(config: dict | None) -> list[Filter]:
    """Filters for `config` (None: `DEFAULT_CONFIG`), in the config's order."""
    config = DEFAULT_CONFIG if config is None else config
    if not isinstance(config, dict):
        raise UserError("filter config must be a mapping of filter name -> options")
    filters = []
    for name, options in config.items():
        if name not in FILTERS:
            raise UserError(f"unknown filter {name!r}; known: {', '.join(FILTERS)}")
        cls, options_cls = FILTERS[name]
        filters.append(cls(options_from_config(options_cls, options or {}, f"filter.{name}")))
    return filters


__all__ = ["DEFAULT_CONFIG", "FILTERS", "Filter", "build_filters"]
