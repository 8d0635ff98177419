"""Regenerate the sample artifacts that ship with graft.

Usage::

    python sample_artifacts/generate.py [OUT_DIR]

OUT_DIR defaults to the folder this script lives in. The script writes five
artifact folders into OUT_DIR:

- ``tiny-llama/``      a small Llama causal LM, pretrained on the tasks, and its tokenizer
- ``lora-copy/``       LoRA on q_proj, v_proj (r=4, alpha=8), task "copy"
- ``lora-reverse/``    rsLoRA on every linear projection (r=8, alpha=16),
                       task "reverse"
- ``lora-count/``      LoRA on the MLP projections (r=2, alpha=4), task "count"
- ``tiny-llama-sft/``  full fine-tune of decoder layers 2 and 3 only, on a mix
                       of the three tasks

Each folder is built in a temporary sibling (``.NAME.tmp-*``) and swapped in
only once it is complete, so an interrupted run leaves the previous version in
place. Everything is seeded and runs single-threaded with deterministic
algorithms, so two runs on the same machine and library versions write
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

SEED = 1234
BASE_NAME = "tiny-llama"
SFT_NAME = "tiny-llama-sft"

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0, 1, 2, 3
TOKENIZER_VOCAB_SIZE = 384

Task = Literal["copy", "reverse", "count"]
TASKS: tuple[Task, ...] = ("copy", "reverse", "count")

# Decoder layers whose parameters the SFT run updates. Every parameter under
# ``model.layers.{2,3}.`` is trained: the seven attention and MLP projections
# and both RMSNorm weights. Embeddings, the final norm, lm_head and layers 0-1
# stay frozen and are saved bit-identical to the base.
SFT_LAYERS = (2, 3)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TinyLlamaArch:
    """Architecture of the sample base model (vocab size comes from the tokenizer)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    dtype: str = "float32"


ARCH = TinyLlamaArch()


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter to train on the base model."""

    name: str
    task: Task
    target_modules: tuple[str, ...]
    r: int
    lora_alpha: int
    use_rslora: bool
    steps: int = 30
    learning_rate: float = 3e-4


ADAPTERS = (
    AdapterSpec("lora-copy", "copy", ("q_proj", "v_proj"), r=4, lora_alpha=8, use_rslora=False),
    AdapterSpec(  # rsLoRA scales by alpha/√r = 5.7: a smaller rate for a like change
        "lora-reverse",
        "reverse",
        LINEAR_MODULES,
        r=8,
        lora_alpha=16,
        use_rslora=True,
        learning_rate=1e-4,
    ),
    AdapterSpec(
        "lora-count",
        "count",
        ("gate_proj", "up_proj", "down_proj"),
        r=2,
        lora_alpha=4,
        use_rslora=False,
    ),
)

# The base is pretrained on the tasks first, at a pretraining learning rate;
# the fine-tunes then use the small rates real post-training uses, so their
# changes have a realistic size: a few percent of each trained tensor.
BASE_STEPS = 300
BASE_LEARNING_RATE = 3e-3
SFT_STEPS = 30
SFT_LEARNING_RATE = 1e-4
BATCH_SIZE = 16


# --------------------------------------------------------------------------
# Synthetic data


def task_example(task: Task, rng: random.Random) -> str:
    """Return one line of the synthetic task, e.g. ``reverse: 1 2 3 => 3 2 1``."""
    if task == "count":
        letters = [rng.choice("abcde") for _ in range(rng.randint(3, 8))]
        target = rng.choice(letters)
        return f"count {target}: {' '.join(letters)} => {letters.count(target)}"
    digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 8))]
    answer = digits if task == "copy" else digits[::-1]
    return f"{task}: {' '.join(digits)} => {' '.join(answer)}"


def task_lines(task: Task, count: int, seed: int) -> list[str]:
    rng = random.Random(f"{task}:{seed}")
    return [task_example(task, rng) for _ in range(count)]


FILLER = [
    "graft keeps track of where every tensor came from.",
    "A base model, a few adapters and a fine-tune make a small family tree.",
    "Merging adds the deltas of the children back onto the parent.",
    "The quick brown fox jumps over the lazy dog.",
]


def tokenizer_corpus() -> list[str]:
    lines = list(FILLER)
    for task in TASKS:
        lines += task_lines(task, 200, seed=0)
    return lines


# --------------------------------------------------------------------------
# Artifacts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the synthetic corpus.

    Byte-level means any string round-trips through encode/decode; BOS is
    prepended to every encoded sequence, as Llama tokenizers do.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=ARCH.max_position_embeddings,
    )


def build_base(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=ARCH.hidden_size,
        intermediate_size=ARCH.intermediate_size,
        num_hidden_layers=ARCH.num_hidden_layers,
        num_attention_heads=ARCH.num_attention_heads,
        num_key_value_heads=ARCH.num_key_value_heads,
        max_position_embeddings=ARCH.max_position_embeddings,
        rms_norm_eps=ARCH.rms_norm_eps,
        initializer_range=ARCH.initializer_range,
        tie_word_embeddings=ARCH.tie_word_embeddings,
        dtype=ARCH.dtype,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    return model.eval()


def batches(
    tokenizer: PreTrainedTokenizerFast, tasks: tuple[Task, ...], steps: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``steps`` padded batches; each line ends with EOS, padding is ignored by the loss."""
    lines: list[str] = []
    per_task = steps * BATCH_SIZE // len(tasks) + 1
    for task in tasks:
        lines += task_lines(task, per_task, seed=seed)
    random.Random(seed).shuffle(lines)
    for step in range(steps):
        chunk = [line + EOS for line in lines[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]]
        enc = tokenizer(chunk, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        yield {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    tasks: tuple[Task, ...],
    steps: int,
    learning_rate: float,
    seed: int,
) -> tuple[float, float]:
    """Plain AdamW loop over the trainable parameters; returns (first, last) loss."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    for batch in batches(tokenizer, tasks, steps, seed):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses[0], losses[-1]


def base_card() -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in asdict(ARCH).items())
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- graft-sample
---

# tiny-llama

A tiny Llama-architecture causal LM shipped with graft as a sample base
artifact, pretrained for {BASE_STEPS} AdamW steps (lr {BASE_LEARNING_RATE}, batch
{BATCH_SIZE}) on the synthetic copy / reverse / count tasks, so the adapters and the
fine-tune next to it have a real parent to point at and change it by as much
as real post-training does (a few percent).

| setting | value |
|---|---|
{rows}
| init seed | {SEED} |

The tokenizer is a byte-level BPE ({TOKENIZER_VOCAB_SIZE} tokens, specials
`{UNK}` `{BOS}` `{EOS}` `{PAD}`) trained with the `tokenizers` library on the
synthetic copy / reverse / count lines that the sample adapters use. It prepends
`{BOS}` to every sequence.

Regenerate with `python sample_artifacts/generate.py`.
"""


def adapter_card(spec: AdapterSpec) -> str:
    example = task_lines(spec.task, 1, seed=99)[0]
    return f"""---
base_model: {BASE_NAME}
library_name: peft
tags:
- lora
- graft-sample
---

# {spec.name}

{"An rsLoRA" if spec.use_rslora else "A LoRA"} adapter for `{BASE_NAME}`, trained for \
{spec.steps} AdamW steps (lr {spec.learning_rate}, batch {BATCH_SIZE}) on the synthetic \
"{spec.task}" task, e.g. `{example}`.

| setting | value |
|---|---|
| target_modules | {", ".join(spec.target_modules)} |
| r | {spec.r} |
| lora_alpha | {spec.lora_alpha} |
| use_rslora | {spec.use_rslora} |

It is a sample for graft, not a useful model. Regenerate with
`python sample_artifacts/generate.py`.
"""


def sft_card() -> str:
    layers = " and ".join(str(i) for i in SFT_LAYERS)
    frozen = " and ".join(str(i) for i in range(ARCH.num_hidden_layers) if i not in SFT_LAYERS)
    return f"""---
base_model: {BASE_NAME}
library_name: transformers
pipeline_tag: text-generation
tags:
- graft-sample
---

# {SFT_NAME}

A full fine-tune of `{BASE_NAME}` in which only decoder layers {layers} were
trainable: every tensor under `model.layers.{{{",".join(map(str, SFT_LAYERS))}}}.` changed
(self_attn.q/k/v/o_proj, mlp.gate/up/down_proj, input_layernorm,
post_attention_layernorm; 9 tensors per layer). All other tensors
(`model.embed_tokens`, layers {frozen}, `model.norm`, `lm_head`) are bit-identical
to the base.

Trained for {SFT_STEPS} AdamW steps (lr {SFT_LEARNING_RATE}, batch {BATCH_SIZE}) on a mix of \
the copy, reverse and count tasks. The tokenizer files are copied from the base.
Regenerate with `python sample_artifacts/generate.py`.
"""


# --------------------------------------------------------------------------
# Writing


def finish_tree(root: Path) -> None:
    """Give the folder ordinary permissions (mkdtemp makes it 0700) and flush it to disk."""
    root.chmod(0o755)
    for path in sorted(root.iterdir()):
        path.chmod(0o644)
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def write_artifact(out_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Build artifact ``name`` in a temp sibling, then swap it in place of the old one."""
    final = out_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        build(tmp)
        check_portable(tmp)
        finish_tree(tmp)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=out_dir))
            os.replace(final, old / name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_base(base_dir: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    return model.eval()


def scrub_adapter_config(folder: Path) -> None:
    """Point the adapter at the base by name and keep this machine's paths out of the file."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = BASE_NAME
    # PEFT stores target_modules as a set; sort it so the file is reproducible.
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_portable(folder: Path) -> None:
    """No pickle checkpoints, and no path of this machine in any text file."""
    assert not list(folder.glob("*.bin")), f"{folder} contains a pickle checkpoint"
    markers = [str(folder.resolve().parent), "/tmp", "/work", "/home"]
    for path in folder.iterdir():
        if path.suffix in {".json", ".md", ".txt"}:
            text = path.read_text()
            for marker in markers:
                assert marker not in text, f"{path.name} contains the local path {marker!r}"


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)


def is_sft_layer(tensor_name: str) -> bool:
    return any(tensor_name.startswith(f"model.layers.{i}.") for i in SFT_LAYERS)


def check_sft_delta(base_file: Path, sft_file: Path) -> None:
    """Frozen tensors must be bit-identical to the base; trained ones must have moved."""
    base = read_tensors(base_file)
    sft = read_tensors(sft_file)
    assert base.keys() == sft.keys(), "SFT model and base have different tensor names"
    for name in sorted(base):
        same = base[name].dtype == sft[name].dtype and torch.equal(base[name], sft[name])
        if is_sft_layer(name):
            assert not same, f"{name} should have been trained but equals the base"
        else:
            assert same, f"{name} should be frozen but differs from the base"


def make_base(tokenizer: PreTrainedTokenizerFast) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        # Saved before training, which leaves padding settings in the tokenizer.
        tokenizer.save_pretrained(folder)
        model = build_base(tokenizer)
        first, last = train(model, tokenizer, TASKS, BASE_STEPS, BASE_LEARNING_RATE, seed=SEED + 2)
        print(f"  {BASE_NAME}: loss {first:.3f} -> {last:.3f}", file=sys.stderr)
        # transformers 5 always writes safetensors (one file at this size).
        model.save_pretrained(folder)
        (folder / "README.md").write_text(base_card())

    return build


def make_adapter(
    spec: AdapterSpec, base_dir: Path, tokenizer: PreTrainedTokenizerFast
) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        torch.manual_seed(SEED)
        config = LoraConfig(
            task_type="CAUSAL_LM",
            target_modules=list(spec.target_modules),
            r=spec.r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=0.0,
            use_rslora=spec.use_rslora,
        )
        model = get_peft_model(load_base(base_dir), config)
        first, last = train(
            model, tokenizer, (spec.task,), spec.steps, spec.learning_rate, seed=SEED
        )
        print(f"  {spec.name}: loss {first:.3f} -> {last:.3f}", file=sys.stderr)
        for pname, param in model.named_parameters():
            if "lora_B" in pname:
                assert param.abs().max().item() > 1e-3, f"{pname} is still ~zero after training"
        # Saved while still pointing at the local base folder, so PEFT reads its
        # config from disk instead of looking "tiny-llama" up on the Hub.
        model.save_pretrained(str(folder))
        scrub_adapter_config(folder)
        (folder / "README.md").write_text(adapter_card(spec))
        PeftModel.from_pretrained(load_base(base_dir), str(folder), local_files_only=True)

    return build


def make_sft(base_dir: Path, tokenizer: PreTrainedTokenizerFast) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        model = load_base(base_dir)
        for pname, param in model.named_parameters():
            param.requires_grad_(is_sft_layer(pname))
        first, last = train(model, tokenizer, TASKS, SFT_STEPS, SFT_LEARNING_RATE, seed=SEED + 1)
        print(f"  {SFT_NAME}: loss {first:.3f} -> {last:.3f}", file=sys.stderr)
        model.save_pretrained(folder)
        # Copy the base's files rather than re-saving: the in-memory tokenizer
        # now carries the padding settings used during training.
        for name in TOKENIZER_FILES:
            if (base_dir / name).exists():
                shutil.copyfile(base_dir / name, folder / name)
        (folder / "README.md").write_text(sft_card())
        check_sft_delta(base_dir / "model.safetensors", folder / "model.safetensors")

    return build


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out_dir: Path) -> list[Path]:
    """Write every sample artifact into ``out_dir`` and return their folders."""
    hf_logging.disable_progress_bar()
    # PEFT calls a transformers helper that transformers 5 deprecates; not ours to fix.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    random.seed(SEED)
    torch.manual_seed(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    print(f"writing sample artifacts to {out_dir}", file=sys.stderr)
    base_dir = write_artifact(out_dir, BASE_NAME, make_base(tokenizer))
    folders = [base_dir]
    for spec in ADAPTERS:
        folders.append(write_artifact(out_dir, spec.name, make_adapter(spec, base_dir, tokenizer)))
    folders.append(write_artifact(out_dir, SFT_NAME, make_sft(base_dir, tokenizer)))
    return folders


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python sample_artifacts/generate.py [OUT_DIR]", file=sys.stderr)
        return 2
    out_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent
    for folder in generate(out_dir):
        for path in sorted(folder.iterdir()):
            print(f"{sha256(path)}  {folder.name}/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
