"""`gpt-data run RECIPE.yaml`: run pipeline steps in order, each reading the previous step's output.

A recipe::

    input: crawl/                 # file or directory for the first step
    output: out/                  # step i writes out/<i>-<step>/ (e.g. out/01-extract)
    workers: 2                    # optional, default 1; --workers overrides
    executor: auto                # optional: auto | local | mpi | slurm
    steps:
      - extract: {source: common-crawl}
      - filter: {language: {languages: [en]}, gopher_repetition: {}, gopher_quality: {}, c4: {}}
      - classifier_score: {model: quality.npz}
      - dedup_exact: {}
      - dedup_minhash: {}
      - decontaminate: {benchmarks: evals/}
      - tokenize: {tokenizer: gpt2}             # out/07-tokenize.bin/.idx
      - mixture: {name: cc, weight: 0.7, source: {wiki: tokens/wiki_text_document:0.3}}

A step's mapping is its configuration; two keys are taken out of it: ``input`` (read
this instead of the previous step's output) and ``output`` (write here instead of
``out/<i>-<step>``). Every step's configuration is checked before the first step
starts, so a typo fails in a second, not after hours.

Adding a step: add one `STEPS` entry, either

- ``name: Step("module:run_function", "module:check_function")``: ``run(input, output,
  config, *, workers, executor, overwrite) -> Stats``, and an optional ``check(config) -> None``
  that raises `UserError` on a bad key or value; the step's options are one dataclass
  (``common.options.options_from_config(Options, config, name)``, see
  `data_pipeline.classifier.ScoreOptions`); or
- ``name: command_step(name, "module:Options", "module:function")``: a subcommand's function
  ``function(args)`` called directly with the options dataclass its flags are made from (see
  ``tokenize``); a subcommand with other path flags passes ``arguments="module:function"``,
  which turns (input, output, options) into the fields of ``args`` (see `mixture`).

``gpt-data run --overwrite`` redoes what differs in every step.

Modules are imported only when a recipe uses the step.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from common.errors import UserError
from common.options import options_from_config
from data_pipeline.remote import is_url


class Step(NamedTuple):
    run: str | Callable  # "module:function" or the function
    check: str | Callable | None = None


def stage_arguments(input: Path | str, output: Path | str, options: Any) -> dict[str, Any]:
    """What a stage subcommand's function reads: ``--input``, ``--output`` and the options."""
    return dict(vars(options), input=str(input), output=str(output))


def command_step(name: str, options: str, run: str, arguments: str | Callable = stage_arguments) -> Step:
    """A recipe step ``name`` whose options are the dataclass `options` ("module:Class", the one the
    subcommand's flags are made from) and which calls the subcommand's function `run(args)`
    ("module:function") directly; `arguments(input, output, options)` gives the fields of `args`
    other than ``workers``, ``executor`` and ``overwrite``."""
    return Step(partial(_run_command, name, options, run, arguments), partial(_check_command, name, options))


def _check_command(name: str, options: str, config: dict[str, Any]) -> None:
    options_from_config(_resolve(options), config, name)


def _run_command(name: str, options: str, run: str, arguments: str | Callable, input, output, config, *,
                 workers: int, executor: str, overwrite: bool) -> None:
    step_options = options_from_config(_resolve(options), config, name)
    args = argparse.Namespace(**{"overwrite": False, **_resolve(arguments)(input, output, step_options)},
                              workers=workers, executor=executor)
    args.overwrite |= overwrite
    code = _resolve(run)(args)
    if code:
        raise UserError(f"{name} exited with code {code}")


STEPS: dict[str, Step] = {
    "extract": Step("data_pipeline.extract.stage:run", "data_pipeline.extract.stage:check"),
    "filter": Step("data_pipeline.filters.stage:run", "data_pipeline.filters.stage:check"),
    "classifier_score": Step("data_pipeline.classifier:run_score", "data_pipeline.classifier:check_score"),
    "dedup_exact": command_step("dedup_exact", "data_pipeline.dedup.cli:ExactOptions", "data_pipeline.dedup.exact:run"),
    "dedup_minhash": command_step("dedup_minhash", "data_pipeline.dedup.cli:MinhashOptions",
                                  "data_pipeline.dedup.fuzzy:run"),
    "decontaminate": command_step("decontaminate", "data_pipeline.decontaminate:DecontaminateOptions",
                                  "data_pipeline.decontaminate:run"),
    # output is a prefix: <output>/<i>-tokenize.bin/.idx
    "tokenize": command_step("tokenize", "data_pipeline.tokenize:TokenizeOptions", "data_pipeline.tokenize:main"),
    # the previous step's prefix is a source; writes <output>/<i>-mixture/blend.json
    "mixture": command_step("mixture", "data_pipeline.mixture:MixtureStep", "data_pipeline.mixture:main",
                            "data_pipeline.mixture:recipe_arguments"),
}
RECIPE_KEYS = ("input", "output", "workers", "executor", "steps")


def _resolve(spec: str | Callable) -> Callable:
    if callable(spec):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class PlannedStep(NamedTuple):
    name: str
    input: Path
    output: Path
    config: dict[str, Any]


def plan(recipe: dict[str, Any]) -> list[PlannedStep]:
    """Validate a loaded recipe (all steps' configs included) and list what will run."""
    if not isinstance(recipe, dict):
        raise UserError("recipe must be a mapping with keys: " + ", ".join(RECIPE_KEYS))
    for key in recipe:
        if key not in RECIPE_KEYS:
            raise UserError(f"recipe: unknown key {key!r}; known: {', '.join(RECIPE_KEYS)}")
    for key in ("input", "output", "steps"):
        if key not in recipe:
            raise UserError(f"recipe: missing key {key!r}")
    steps = recipe["steps"]
    if not isinstance(steps, list) or not steps:
        raise UserError("recipe: 'steps' must be a non-empty list of {step_name: config}")
    if is_url(recipe["output"]):
        raise UserError(f"recipe: output {recipe['output']}: gpt-data run writes local files only")
    planned, previous = [], Path(recipe["input"])
    for i, entry in enumerate(steps, start=1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise UserError(f"recipe: step {i} must be a single-key mapping {{step_name: config}}, got {entry!r}")
        (name, config), = entry.items()
        if name not in STEPS:
            raise UserError(f"recipe: step {i}: unknown step {name!r}; known: {', '.join(STEPS)}")
        if not isinstance(config or {}, dict):
            raise UserError(f"recipe: step {i} ({name}): config must be a mapping")
        config = dict(config or {})
        step_input = Path(config.pop("input", previous))
        step_output = Path(config.pop("output", Path(recipe["output"]) / f"{i:02d}-{name}"))
        if STEPS[name].check:
            _resolve(STEPS[name].check)(config)
        planned.append(PlannedStep(name, step_input, step_output, config))
        previous = step_output
    return planned


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None


def produced(path: Path) -> bool:
    """Whether a step's input is there: a file, a directory, or a token prefix (``PREFIX.bin`` and ``.idx``)."""
    return path.exists() or all(path.with_name(path.name + suffix).is_file() for suffix in (".bin", ".idx"))


def run_recipe(path: str | Path, workers: int | None = None, executor: str | None = None,
               overwrite: bool = False) -> list[PlannedStep]:
    """Run every step of the recipe at `path`; completed shards of earlier runs are kept
    (those made from other inputs, options or code are refused, or redone with `overwrite`)."""
    recipe = load_recipe(path)
    steps = plan(recipe)
    workers = workers or int(recipe.get("workers", 1))
    executor = executor or recipe.get("executor", "auto")
    for step in steps:
        if not produced(step.input):
            raise UserError(f"step {step.name}: input does not exist: {step.input}")
        _resolve(STEPS[step.name].run)(step.input, step.output, step.config, workers=workers, executor=executor,
                                       overwrite=overwrite)
    from data_pipeline.report import write_report  # matplotlib is imported once the steps are done

    print(f"report: {write_report([step.output for step in steps], Path(recipe['output']) / 'report.html')}")
    return steps


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a whole pipeline from a YAML recipe",
        description="Run the steps of RECIPE.yaml in order (" + ", ".join(STEPS) + "); each step reads the "
                    "previous step's output directory. Re-running resumes where a killed run stopped.")
    parser.add_argument("recipe", help="YAML recipe (see docs/data_pipeline.md)")
    parser.add_argument("--workers", type=int, default=None, help="override the recipe's workers")
    parser.add_argument("--executor", default=None, choices=("auto", "local", "mpi", "slurm"),
                        help="override the recipe's executor")
    parser.add_argument("--overwrite", action="store_true",
                        help="pass --overwrite to every step: redo work made from other inputs, options or code")
    parser.set_defaults(func=lambda args: run_recipe(args.recipe, args.workers, args.executor, args.overwrite) and 0)
