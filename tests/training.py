"""A real (tiny) training run for tests about compression: optimizer output, not noise.

A small Llama learns the bytes of Python's own standard library with AdamW;
it is saved as a base, then fine-tuned with checkpoints every few steps (each
with the `trainer_state.json` a transformers Trainer writes: step and losses),
and a second fine-tune of the base is saved beside them.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM


def stdlib_bytes(limit: int = 2_000_000) -> torch.Tensor:
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    text = b"".join(p.read_bytes() for p in files)[:limit]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def train_steps(
    model: LlamaForCausalLM, data: torch.Tensor, steps: int, lr: float, seed: int, batch: int = 8
) -> Iterator[tuple[int, float]]:
    """Yield (step, loss) after each AdamW step on `batch` random windows of `data`."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - 65, (batch,), generator=g)
        windows = torch.stack([data[s : s + 65] for s in starts])
        loss = model(input_ids=windows, labels=windows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        yield step, loss.item()


def save_model(model: LlamaForCausalLM, folder: Path, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    model.config.save_pretrained(folder)


def relative_change(a: Path, b: Path) -> float:
    """Median over matrices of ‖B − A‖ / ‖A‖ between two saved models: how far
    a run moved."""
    ta, tb = (load_file(p / "model.safetensors") for p in (a, b))
    return statistics.median(
        float((tb[k].float() - ta[k].float()).norm() / ta[k].float().norm())
        for k in ta
        if ta[k].dim() == 2
    )


def make_run(
    out: Path,
    *,
    checkpoints: int = 3,
    every: int = 10,
    dtype: torch.dtype = torch.bfloat16,
    hidden: int = 128,
    layers: int = 2,
    pretrain_steps: int = 60,
    lr: float = 1e-4,
) -> None:
    """out/base, out/checkpoint-{every,2·every,...}, out/other (a second child of base).

    The base is trained at a high learning rate; the fine-tunes use `lr`."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    data = stdlib_bytes()
    for _ in train_steps(model, data, pretrain_steps, 2e-3, seed=0):
        pass
    save_model(model, out / "base", dtype)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    history = []
    for step, loss in train_steps(model, data, checkpoints * every, lr, seed=1):
        history.append({"step": step, "loss": round(loss, 4)})
        if step % every == 0:
            save_model(model, out / f"checkpoint-{step}", dtype)
            state = {"global_step": step, "log_history": history}
            (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
    model.load_state_dict(base_state)
    for _ in train_steps(model, data, every, lr, seed=2):
        pass
    save_model(model, out / "other", dtype)
