"""Real trainer outputs, made on the spot: TRL's SFT (LoRA) and DPO, a transformers Trainer run.

Each trains a few steps on CPU from the bundled tiny Llama (with its own
tokenizer), on a handful of made-up strings, and writes its output folder
exactly as the tool does: cards, checkpoint-N folders, trainer state and all.
Run as `python -m tests.trainers BASE OUT`, in a process of its own, so the
trainers' global settings stay out of the test process.
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
COMMON = {"report_to": [], "use_cpu": True, "per_device_train_batch_size": 2, "seed": 0}


def sft_lora(base: Path, out: Path) -> None:
    """TRL SFTTrainer with a LoRA peft_config; a checkpoint every 2 of 4 steps."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    texts = Dataset.from_list([{"text": f"copy: {w} -> {w}"} for w in WORDS])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=SFTConfig(
            output_dir=str(out), max_steps=4, save_steps=2, learning_rate=1e-3, **COMMON
        ),
        train_dataset=texts,
        processing_class=AutoTokenizer.from_pretrained(base),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    trainer.train()
    trainer.save_model()


def dpo_full(base: Path, out: Path) -> None:
    """TRL DPOTrainer on full weights, saved with no card (as `save_model` leaves it)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = Dataset.from_list(
        [{"prompt": f"copy: {w} ->", "chosen": f" {w}", "rejected": f" {w[::-1]}"} for w in WORDS]
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=DPOConfig(
            output_dir=str(out), max_steps=2, save_strategy="no", learning_rate=1e-4, **COMMON
        ),
        train_dataset=pairs,
        processing_class=AutoTokenizer.from_pretrained(base),
    )
    trainer.train()
    trainer.save_model()


def trainer_run(base: Path, out: Path) -> None:
    """A plain transformers Trainer with save_steps: checkpoint-2, -4, -6, then the final model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [tokenizer(f"count: {w} {len(w)}")["input_ids"] for w in WORDS]
    width = max(map(len, rows))
    data = [
        {
            "input_ids": torch.tensor(ids + [0] * (width - len(ids))),
            "labels": torch.tensor(ids + [-100] * (width - len(ids))),
        }
        for ids in rows
    ]
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=TrainingArguments(
            output_dir=str(out),
            max_steps=6,
            save_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            **COMMON,
        ),
        train_dataset=data,
    )
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    sft_lora(base, out / "sft")
    dpo_full(base, out / "dpo")
    trainer_run(base, out / "run")
