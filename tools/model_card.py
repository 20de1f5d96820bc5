"""The model card (README.md) `gpt-convert to-hf` writes: what the checkpoint and its run directory record.

Sources: the checkpoint's manifest (config, trainer state), the run's blend JSON (`data.blend`),
`<run_dir>/metrics.jsonl` (validation losses) and optionally a `gpt-eval --output` JSON. What
they do not record is written as "unknown", never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from data_pipeline.blend import Blend, load_blend
from data_pipeline.tokenizers import Tokenizer

UNKNOWN = "unknown"


@dataclass
class RunRecord:
    """What a checkpoint's run left behind; `blend` and `run_dir` are None where it is not found."""
    manifest: dict
    blend: Blend | None
    run_dir: Path | None

    @classmethod
    def of(cls, manifest: dict, run_dir: str | None = None) -> RunRecord:
        """`run_dir`: given, or the trainer's layout `<run_dir>/checkpoints/stepN` when it holds metrics.jsonl."""
        if run_dir is not None and not (Path(run_dir) / "metrics.jsonl").is_file():
            raise UserError(f"--run-dir {run_dir} holds no metrics.jsonl")
        default = Path(manifest["path"]).parent.parent
        found = Path(run_dir) if run_dir else default if (default / "metrics.jsonl").is_file() else None
        blend_path = manifest["config"].get("data", {}).get("blend")
        try:  # relative to where the run started, as the trainer read it
            blend = load_blend(blend_path, check_files=False) if blend_path else None
        except UserError:
            blend = None
        return cls(manifest, blend, found)

    def final_validation(self) -> dict | None:
        """The last validation record at or before the checkpoint's step (a resumed run appends)."""
        if self.run_dir is None:
            return None
        step = (self.manifest["trainer"] or {}).get("step")
        records = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]
        valid = [r for r in records if "valid_loss" in r and (step is None or r["step"] <= step)]
        return valid[-1] if valid else None


def read_eval_results(path: str) -> list[dict]:
    try:
        results = json.loads(Path(path).read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--eval-results {path}: not a gpt-eval --output JSON ({err})") from None
    return results


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def number(value, digits: int = 4) -> str:
    return UNKNOWN if value is None else f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}"


def evaluation_section(results: list[dict]) -> list[str]:
    rows = [[r["task"], r["kind"], str(r.get("shots", "")), str(r.get("examples", r.get("tokens", ""))),
             number(r.get("acc"), 3) if "acc" in r else "", number(r.get("acc_norm"), 3) if "acc_norm" in r else "",
             number(r.get("ppl", r.get("target_ppl")), 2) if "ppl" in r or "target_ppl" in r else ""]
            for r in results]
    return ["## Evaluation (gpt-eval)", "",
            *table(["task", "kind", "shots", "examples", "acc", "acc_norm", "ppl"], rows), ""]


def blend_section(blend: Blend | None) -> list[str]:
    if blend is None:
        return [f"Data blend: {UNKNOWN}", ""]
    rows = [[s.name, f"{s.weight:g}", number(s.tokens), number(s.epochs, 2)] for s in blend.sources]
    return [f"Data blend (`{blend.path.name}`):", "", *table(["source", "weight", "tokens", "epochs"], rows), ""]


def model_card(record: RunRecord, hf_class: str, parameters: int, tokenizer: Tokenizer | None,
               eval_results: list[dict] | None) -> str:
    model, trainer = record.manifest["config"]["model"], record.manifest["trainer"] or {}
    valid = record.final_validation()
    validation = (f"{valid['valid_loss']:.4f} (perplexity {valid['valid_ppl']:.2f}) at step {valid['step']}"
                  if valid else UNKNOWN)
    batch, seq = record.manifest["config"]["train"]["global_batch_size"], model["seq_length"]
    tokens = (f"{trainer['tokens']:,} ({trainer['step']:,} steps at up to {batch} x {seq} tokens)"
              if "tokens" in trainer else UNKNOWN)
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "---", "",
             f"# {model['arch'].upper()} {parameters / 1e6:.1f}M", "",
             f"Exported by `gpt-convert to-hf` from `{record.manifest['path']}` as transformers' `{hf_class}`.", "",
             "## Model", "",
             *table(["", ""], [["architecture", model["arch"]], ["layers", str(model["n_layers"])],
                               ["d_model", str(model["d_model"])], ["heads", str(model["n_heads"])],
                               ["context", str(seq)], ["vocabulary", str(model["vocab_size"])],
                               ["parameters", f"{parameters:,}"],
                               ["tokenizer", tokenizer.name if tokenizer else UNKNOWN]]), "",
             "## Training", "",
             f"Tokens trained: {tokens}", "",
             *blend_section(record.blend),
             f"Final validation loss: {validation}", ""]
    if eval_results:
        lines += evaluation_section(eval_results)
    return "\n".join(lines)
