"""gpt-convert: our checkpoints <-> Hugging Face GPT-2 and GPT-1, resharding, consolidation, inspection.

    gpt-convert to-hf --input CKPT_DIR --output HF_DIR [--tokenizer SPEC] [--run-dir DIR] [--eval-results JSON]
    gpt-convert from-hf --input HF_DIR --output CKPT_DIR --tp N --pp N
    gpt-convert reshard --input CKPT_DIR --output CKPT_DIR --tp N --pp N
    gpt-convert consolidate --input CKPT_DIR --output CKPT_DIR
    gpt-convert inspect --input CKPT_DIR

CKPT_DIR is a checkpoint (`.../step00000100`) or the directory holding `latest`.
Written checkpoints are weights-only (no optimizer or trainer state): a run started
from one with `checkpoint.load=CKPT_DIR` begins at step 0 from these weights. The
trainer itself resumes full checkpoints at any TP/PP/DP layout without resharding.
Written vocabularies are padded to a multiple of `--vocab-multiple` x TP (the trainer's
default padding): padded rows are masked out of the softmax, so any padding is the same model.
A gpt-finetune checkpoint keeps its task head and task record through reshard and consolidate;
to-hf exports its trunk only (Hugging Face's GPT-2 has no place for the head) and says so.
"""
from __future__ import annotations

import argparse
import pickle
import sys
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from common.files import write_text_atomically
from data_pipeline.tokenizers import Tokenizer, load_tokenizer, save_hf_tokenizer
from tools.model_card import RunRecord, model_card, read_eval_results
from tools.task_head import HEAD_PREFIX, INFO_KEY, head_parameters
from training.checkpoint_files import ShardReader, refuse_existing, verified_manifest, write_weights
from training.config import Config, ModelConfig

HF_EXCLUDED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights (not attn.c_attn.bias)
HF_FORMATS = ("directory with config.json and model.safetensors, or pytorch_model.bin (a pickle: read with "
              "torch's weights-only loading, tensors only; anything else is refused)")
VOCAB_MULTIPLE = ModelConfig.make_vocab_size_divisible_by  # the trainer's default padding (x TP)


# --------------------------------------------------------------------------- the QKV layout

def qkv_to_hf(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Ours: rows per head [head][q|k|v][head_dim]. HF GPT-1/2's Conv1D: columns [q | k | v], heads inside each."""
    head_dim = tensor.shape[0] // (3 * n_heads)
    rest = tensor.shape[1:]
    merged = tensor.reshape(n_heads, 3, head_dim, *rest).transpose(0, 1).reshape(3 * n_heads * head_dim, *rest)
    return merged.t().contiguous() if merged.ndim == 2 else merged.contiguous()


def qkv_from_hf(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows = tensor.t() if tensor.ndim == 2 else tensor
    head_dim = rows.shape[0] // (3 * n_heads)
    rest = rows.shape[1:]
    return rows.reshape(3, n_heads, head_dim, *rest).transpose(0, 1).reshape(-1, *rest).contiguous()


@dataclass(frozen=True)
class HfFamily:
    """A transformers model class our checkpoints convert to and from: the same blocks (Conv1D weights,
    q|k|v columns), told apart by the names of the embeddings and by GPT-2's final LayerNorm."""
    name: str
    model_type: str
    model_class: str
    token_embedding: str
    position_embedding: str
    final_norm: str | None

    def load_class(self):
        import transformers
        return getattr(transformers, self.model_class)


GPT2 = HfFamily("GPT-2", "gpt2", "GPT2LMHeadModel", "transformer.wte.weight", "transformer.wpe.weight",
                "transformer.ln_f")
GPT1 = HfFamily("GPT-1", "openai-gpt", "OpenAIGPTLMHeadModel", "transformer.tokens_embed.weight",
                "transformer.positions_embed.weight", None)
FAMILIES = {family.model_type: family for family in (GPT2, GPT1)}


def family_of(model: ModelConfig) -> HfFamily:
    """Our post-LayerNorm GPT-1 is transformers' OpenAIGPT; GPT-2 and dense GPT-3 are its GPT-2."""
    return GPT1 if model.arch == "gpt1" else GPT2


def hf_names(family: HfFamily, n_layers: int) -> list[tuple[str, str, str]]:
    """(our name, HF name, how): 'same', 't' (HF Conv1D stores weights transposed) or 'qkv'."""
    names = [("token_embedding.embedding.weight", family.token_embedding, "same"),
             ("position_embedding.weight", family.position_embedding, "same")]
    if family.final_norm:
        names += [(f"final_norm.ln.{p}", f"{family.final_norm}.{p}", "same") for p in ("weight", "bias")]
    for i in range(n_layers):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        names += [(ours + f"{ln}.{p}", hf + f"{ln}.{p}", "same") for ln in ("ln_1", "ln_2") for p in ("weight", "bias")]
        names += [(ours + f"attention.qkv.{p}", hf + f"attn.c_attn.{p}", "qkv") for p in ("weight", "bias")]
        names += [(ours + "attention.proj.weight", hf + "attn.c_proj.weight", "t"),
                  (ours + "attention.proj.bias", hf + "attn.c_proj.bias", "same"),
                  (ours + "mlp.fc.weight", hf + "mlp.c_fc.weight", "t"),
                  (ours + "mlp.fc.bias", hf + "mlp.c_fc.bias", "same"),
                  (ours + "mlp.proj.weight", hf + "mlp.c_proj.weight", "t"),
                  (ours + "mlp.proj.bias", hf + "mlp.c_proj.bias", "same")]
    return names


# --------------------------------------------------------------------------- to-hf

def check_convertible(model: ModelConfig) -> None:
    family = family_of(model)
    if model.sparse_every:
        raise UserError(f"the model uses GPT-3's locally banded sparse attention (model.sparse_every="
                        f"{model.sparse_every}), which Hugging Face {family.name} cannot represent")
    if model.head_dim * model.n_heads != model.d_model:
        raise UserError(f"model.d_head={model.d_head} x n_heads != d_model: {family.name} requires d_model = heads x "
                        "head size")
    if family is GPT1 and model.ffn_multiplier != 4:
        raise UserError(f"model.ffn_multiplier={model.ffn_multiplier}: Hugging Face GPT-1's MLP is 4 x d_model wide")


def hf_config(model: ModelConfig, eod_id: int | None):
    """transformers' config for our model; both GELUs are the tanh approximation (OpenAIGPT's "gelu" is).
    Generation (transformers' pipeline) stops at the tokenizer's end-of-document id when there is one."""
    from transformers import GPT2Config, OpenAIGPTConfig

    shared = dict(vocab_size=model.vocab_size, n_positions=model.seq_length, n_embd=model.d_model,
                  n_layer=model.n_layers, n_head=model.n_heads, resid_pdrop=model.dropout, embd_pdrop=model.dropout,
                  attn_pdrop=model.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    if eod_id is not None:
        shared.update(bos_token_id=eod_id, eos_token_id=eod_id)
    if family_of(model) is GPT1:
        return OpenAIGPTConfig(afn="gelu", **shared)
    return GPT2Config(n_inner=model.ffn_multiplier * model.d_model, activation_function="gelu_new", **shared)


def export_tokenizer(spec: str | None, record: RunRecord, model: ModelConfig) -> Tokenizer | None:
    """`spec` (`none`: no tokenizer), else the tokenizer of the run's blend, else none."""
    if spec == "none" or (spec is None and record.blend is None):
        return None
    tokenizer = load_tokenizer(spec) if spec else record.blend.load_tokenizer()
    if tokenizer.vocab_size > model.vocab_size:
        raise UserError(f"to-hf: the tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, the model "
                        f"{model.vocab_size}")
    return tokenizer


def to_hf(input_dir: str, output_dir: str, tokenizer: str | None = None, run_dir: str | None = None,
          eval_results: str | None = None) -> Path:
    """GPT-2 (GPT-1 for model.arch=gpt1) over the tokenizer's vocabulary (our padded rows are no tokens: masked
    out of our softmax), the tokenizer's files (spec `tokenizer`, default the run's) and a model card."""
    manifest = verified_manifest(input_dir)
    model_cfg = ModelConfig(**manifest["config"]["model"])
    check_convertible(model_cfg)
    task = head_parameters(input_dir)[1]
    if task is not None:
        print(f"gpt-convert: note: {manifest['path']} is fine-tuned for {task['task']} ({task['kind']}): exporting "
              "its trunk only, without the task head and the special-token rows", file=sys.stderr)
    record = RunRecord.of(manifest, run_dir)
    results = read_eval_results(eval_results) if eval_results else None
    vocabulary = export_tokenizer(tokenizer, record, model_cfg)
    family = family_of(model_cfg)
    ours = ShardReader(manifest).state_dict()
    state = {}
    for name, hf_name, how in hf_names(family, model_cfg.n_layers):
        tensor = ours[name]
        state[hf_name] = (qkv_to_hf(tensor, model_cfg.n_heads) if how == "qkv"
                          else tensor.t().contiguous() if how == "t" else tensor)
    state[family.token_embedding] = state[family.token_embedding][:model_cfg.vocab_size].clone()
    model = family.load_class()(hf_config(model_cfg, vocabulary.eod_id if vocabulary else None))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(HF_EXCLUDED)]
    if missing or unexpected:
        raise UserError(f"to-hf: mapping incomplete (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if vocabulary:  # first: a tokenizer without Hugging Face files stops the export before anything is written
        try:
            save_hf_tokenizer(vocabulary, output_dir)
        except UserError as err:
            raise UserError(f"to-hf: {err} (--tokenizer none exports the model without tokenizer files)") from None
    model.save_pretrained(output_dir, safe_serialization=True)
    card = model_card(record, family.model_class, model.num_parameters(), vocabulary, results)
    write_text_atomically(Path(output_dir) / "README.md", card)
    return Path(output_dir)


# --------------------------------------------------------------------------- from-hf, reshard, consolidate

def config_from_hf(hf_config, vocab_multiple: int) -> Config:
    """Our config for a transformers GPT-2 or GPT-1 (OpenAIGPT: post-LN, MLP 4 x d_model, no final norm)."""
    if hf_config.model_type == GPT1.model_type:
        if hf_config.afn != "gelu":  # OpenAIGPT's "gelu" is the tanh approximation, as ours
            raise UserError(f"from-hf: activation {hf_config.afn!r} is not GPT-1's tanh GELU ('gelu')")
        arch, inner = "gpt1", 4 * hf_config.n_embd
    else:
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"from-hf: activation {hf_config.activation_function!r} is not GPT-2's tanh GELU")
        if (getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)
                or not getattr(hf_config, "scale_attn_weights", True)):
            raise UserError("from-hf: attention scaling differs from GPT-2's 1/sqrt(head size)")
        arch, inner = "gpt2", hf_config.n_inner or 4 * hf_config.n_embd
    if inner % hf_config.n_embd:
        raise UserError(f"from-hf: n_inner={inner} is not a multiple of n_embd={hf_config.n_embd}")
    cfg = Config()
    cfg.model = ModelConfig(arch=arch, n_layers=hf_config.n_layer, d_model=hf_config.n_embd,
                            n_heads=hf_config.n_head, seq_length=hf_config.n_positions,
                            vocab_size=hf_config.vocab_size, make_vocab_size_divisible_by=vocab_multiple,
                            ffn_multiplier=inner // hf_config.n_embd, dropout=hf_config.resid_pdrop, sparse_every=0)
    return cfg


def partition_dims(cfg: Config) -> dict[str, int | None]:
    """Which dimension TP splits each parameter along, asked of the model itself (built once at TP = 1, on the
    meta device: no memory and no initialisation, which would take hours at 175B)."""
    from training.checkpoint import partition_dim
    from training.consolidated import ensure_single_process_groups
    from training.model import GPT

    ensure_single_process_groups()
    with torch.device("meta"):
        model = GPT(cfg.model, cfg.train.seed)
    return {name: partition_dim(p) for name, p in model.named_parameters()}


def stages(names, n_layers: int, pp: int) -> dict[str, int]:
    """Which pipeline stage's file holds each parameter (any layout loads any file; this spreads reading)."""
    def stage(name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) * pp // n_layers
        return pp - 1 if name.startswith(("final_norm", HEAD_PREFIX)) else 0
    return {name: stage(name) for name in names}


def write_layout(state: Mapping[str, torch.Tensor], cfg: Config, output: str, tp: int, pp: int, padded: int,
                 extra: dict | None = None) -> Path:
    """The model's weights (and a fine-tuned task head's, `loss_fn.head.*`, with `extra` its manifest record)."""
    if cfg.model.n_heads % tp or padded % tp or cfg.model.n_layers < pp:
        raise UserError(f"layout TP={tp} PP={pp} does not fit {cfg.model.n_heads} heads, {cfg.model.n_layers} "
                        f"layers and a padded vocabulary of {padded}")
    cfg.parallel.tp, cfg.parallel.pp = tp, pp
    cfg.model.make_vocab_size_divisible_by = padded // tp
    dims = partition_dims(_single_process(cfg))
    dims.update(dict.fromkeys((n for n in state if n.startswith(HEAD_PREFIX)), None))  # torch layers: never TP-split
    if set(dims) != set(state):
        raise UserError(f"parameters do not match the model: {sorted(set(dims) ^ set(state))[:3]}")
    return write_weights(output, state, dims, cfg.to_dict(), tp, pp, stages(state, cfg.model.n_layers, pp), padded,
                         extra=extra)


def _single_process(cfg: Config) -> Config:
    import copy
    single = copy.deepcopy(cfg)
    single.model.make_vocab_size_divisible_by = cfg.model.padded_vocab_size(cfg.parallel.tp)
    return single


def from_hf(input_dir: str, output_dir: str, tp: int, pp: int, vocab_multiple: int = VOCAB_MULTIPLE) -> Path:
    """A Hugging Face GPT-2 or GPT-1 (OpenAIGPT) directory as our checkpoint; any other model type, or any
    weight missing from the files, left over in them or not used by the conversion, is refused (nothing is
    written)."""
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    try:
        model_type = AutoConfig.from_pretrained(input_dir, local_files_only=True).model_type
        family = FAMILIES.get(model_type)
        if family is None:
            raise UserError(f"from-hf: {input_dir} holds a {model_type!r} model; only GPT-2 (model_type 'gpt2') "
                            "and GPT-1 ('openai-gpt') are converted")
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its load report: the problems are ours to report, in one line
        try:
            hf, loading = family.load_class().from_pretrained(
                input_dir, torch_dtype=torch.float32, local_files_only=True,
                weights_only=True,  # a pickled pytorch_model.bin: tensors
                output_loading_info=True)
        finally:
            transformers_logging.set_verbosity(verbosity)
    except pickle.UnpicklingError:
        raise UserError(f"from-hf: the weights in {input_dir} hold more than tensors (unpickling them would run "
                        "code); refusing them") from None
    except (OSError, ValueError) as err:
        raise UserError(f"from-hf: cannot load a Hugging Face model from {input_dir}: {err}") from None
    cfg = config_from_hf(hf.config, vocab_multiple)
    padded = cfg.model.padded_vocab_size(tp)
    hf_state = {k: v for k, v in hf.state_dict().items() if not k.endswith(HF_EXCLUDED)}
    names = hf_names(family, cfg.model.n_layers)
    if torch.equal(hf_state["lm_head.weight"], hf_state[family.token_embedding]):
        del hf_state["lm_head.weight"]  # tied to the token embedding, as ours is
    problems = ([f"weight {k} is missing from the files" for k in loading["missing_keys"] if k in hf_state]
                + [f"weight {k} has the wrong shape" for k, *_ in loading["mismatched_keys"]]
                + [f"weight {k} in the files is not a {family.name} weight" for k in loading["unexpected_keys"]
                   if not k.endswith(HF_EXCLUDED)]
                + [f"weight {k} is not used by the conversion"
                   for k in sorted(set(hf_state) - {hf_name for _, hf_name, _ in names})])
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"from-hf: {input_dir}: {problems[0]}{more}; not converted")
    state = {}
    for name, hf_name, how in names:
        tensor = hf_state[hf_name].float()
        state[name] = (qkv_from_hf(tensor, cfg.model.n_heads) if how == "qkv"
                       else tensor.t().contiguous() if how == "t" else tensor.clone())
    wte = state["token_embedding.embedding.weight"]  # padded rows are zero, as Megatron pads
    state["token_embedding.embedding.weight"] = torch.cat([wte, wte.new_zeros(padded - wte.shape[0], wte.shape[1])])
    return write_layout(state, cfg, output_dir, tp, pp, padded)


def reshard(input_dir: str, output_dir: str, tp: int, pp: int, vocab_multiple: int = VOCAB_MULTIPLE) -> Path:
    """The weights at TP x PP, the vocabulary re-padded to a multiple of `vocab_multiple` x TP; a fine-tuned
    checkpoint's head and task record (from any of gpt-finetune's output formats) in the current format."""
    from training.consolidated import checkpoint_config

    manifest = verified_manifest(input_dir)
    cfg = checkpoint_config(manifest)
    cfg.model.make_vocab_size_divisible_by = vocab_multiple
    padded = cfg.model.padded_vocab_size(tp)
    head, task, _ = head_parameters(input_dir)
    special = max(task["start_id"], task["delimiter_id"], task["extract_id"]) if task else -1
    if special >= padded:
        raise UserError(f"the fine-tuned model's special tokens use rows up to {special} of the padded vocabulary; "
                        f"padding to {padded} rows (--vocab-multiple {vocab_multiple} x TP {tp}) would cut them")
    state = ChainMap(head, ShardReader(manifest, padded).lazy_state())  # read as each output file is written
    return write_layout(state, cfg, output_dir, tp, pp, padded, extra={INFO_KEY: task} if task else None)


# --------------------------------------------------------------------------- inspect

def describe(input_dir: str) -> str:
    manifest = verified_manifest(input_dir)
    model, layout, trainer = manifest["config"]["model"], manifest["layout"], manifest["trainer"] or {}
    count = sum(torch.Size(p["shape"]).numel() for p in manifest["params"].values())
    size = sum(f["bytes"] for f in manifest["files"].values())
    return "\n".join([
        f"checkpoint   {manifest['path']}",
        f"layout       TP {layout['tp']} x PP {layout['pp']} x DP {layout['dp']} "
        f"({layout.get('precision', 'fp32')}, ZeRO {layout.get('zero_stage', '-')})",
        f"model        {model['arch']}: {model['n_layers']} layers, d_model {model['d_model']}, "
        f"{model['n_heads']} heads, context {model['seq_length']}, vocab {model['vocab_size']} "
        f"(padded {manifest['padded_vocab_size']})",
        f"parameters   {count:,}",
        f"step         {trainer.get('step', 0)}   tokens {trainer.get('tokens', 0):,}   "
        f"samples {trainer.get('consumed_samples', 0):,}"
        + ("" if manifest["trainer"] else "   (weights only)"),
        f"optimizer    {'Adam moments included' if manifest['optimizer'] else 'none'}",
        f"files        {len(manifest['files'])}, {size / 2**20:,.1f} MiB, checksums verified",
    ] + ([f"fine-tuned   {task['task']} ({task['kind']}), task head included"]
         if (task := manifest.get(INFO_KEY)) else []))


# --------------------------------------------------------------------------- CLI

def add_vocab_multiple(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-multiple", type=int, default=VOCAB_MULTIPLE,
                        help="pad the vocabulary to a multiple of this x TP (model.make_vocab_size_divisible_by; "
                             "default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-hf", help="our checkpoint -> Hugging Face GPT-2 (GPT-1 for model.arch=gpt1) directory")
    p.add_argument("--input", required=True, help="checkpoint directory (or the one holding `latest`)")
    p.add_argument("--output", required=True, help="Hugging Face model directory to write")
    p.add_argument("--tokenizer", help="tokenizer whose files to write (gpt2, gpt2:PATH.tiktoken, byte-bpe:DIR; none: "
                                       "no tokenizer files); default: the run's blend's tokenizer, none if unknown")
    p.add_argument("--run-dir", help="the training run's directory, for the model card's validation loss (default: "
                                     "the one holding the checkpoint's checkpoints/ directory, if any)")
    p.add_argument("--eval-results", metavar="JSON", help="a gpt-eval --output file: the model card's evaluation table")
    p = sub.add_parser("from-hf", help="Hugging Face GPT-2 or GPT-1 directory -> our checkpoint at a TP x PP layout")
    p.add_argument("--input", required=True, help=HF_FORMATS)
    p.add_argument("--output", required=True, help="checkpoint directory to write")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    add_vocab_multiple(p)
    p = sub.add_parser("reshard", help="write a checkpoint's weights at another TP x PP layout")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    add_vocab_multiple(p)
    p = sub.add_parser("consolidate", help="all weights in one file (TP 1 x PP 1) for inference")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    add_vocab_multiple(p)
    p = sub.add_parser("inspect", help="print layout, step, tokens, parameter count; verify checksums")
    p.add_argument("--input", required=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("from-hf", "reshard", "consolidate"):
            refuse_existing(Path(args.output))  # before the work, not after it
        if args.command == "to-hf":
            output = to_hf(args.input, args.output, args.tokenizer, args.run_dir, args.eval_results)
            unnamed = args.tokenizer is None and not (output / "tokenizer.json").is_file()
            print(f"wrote {output}" + (" without tokenizer files (the checkpoint's run names none: --tokenizer SPEC)"
                                       if unnamed else ""))
        elif args.command == "from-hf":
            print(f"wrote {from_hf(args.input, args.output, args.tp, args.pp, args.vocab_multiple)}")
        elif args.command == "reshard":
            print(f"wrote {reshard(args.input, args.output, args.tp, args.pp, args.vocab_multiple)}")
        elif args.command == "consolidate":
            print(f"wrote {reshard(args.input, args.output, 1, 1, args.vocab_multiple)}")
        else:
            print(describe(args.input))
    except UserError as err:
        print(f"gpt-convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
