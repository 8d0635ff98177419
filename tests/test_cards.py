"""Methods and bases from the cards Axolotl, Unsloth, TRL and transformers write.

The cards are built here the way each tool writes them (Axolotl quotes its
YAML config in the card; Unsloth's upload card tags `unsloth` and `trl`);
neither tool needs to run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graft.lineage.declared import declared_lineage
from tests.conftest import SAMPLES, graft_json

BADGE = (
    '[<img src="https://raw.githubusercontent.com/axolotl-ai-cloud/axolotl/main/image/'
    'axolotl-badge-web.png" alt="Built with Axolotl" width="200" height="32"/>]'
    "(https://github.com/axolotl-ai-cloud/axolotl)"
)


def axolotl_card(config: str, *, base: str | None = "tiny-llama", library: str = "peft") -> str:
    front = [f"library_name: {library}", "license: apache-2.0"]
    front += [f"base_model: {base}"] if base else []
    front += ["tags:", "- axolotl", "- generated_from_trainer", "model-index:", "- name: out"]
    return "\n".join(
        [
            "---",
            *front,
            "  results: []",
            "---",
            "",
            "<!-- This model card has been generated automatically according to the information"
            " the Trainer had access to. -->",
            "",
            BADGE,
            "<details><summary>See axolotl config</summary>",
            "",
            "axolotl version: `0.8.0`",
            "```yaml",
            config.strip(),
            "```",
            "",
            "</details><br>",
            "",
            "# out",
        ]
    )


def card(front: str, body: str = "# model\n") -> str:
    return f"---\n{front.strip()}\n---\n\n{body}"


UNSLOTH_UPLOAD = card(
    """
base_model: unsloth/tiny-llama
tags:
- text-generation-inference
- transformers
- unsloth
- llama
- trl
license: apache-2.0
language:
- en
""",
    "# Uploaded model\n\nThis llama model was trained 2x faster with Unsloth and Huggingface's "
    "TRL library.\n",
)

CASES = {
    "axolotl dpo lora": (
        axolotl_card("base_model: tiny-llama\nrl: dpo\nadapter: lora\nlora_r: 4\n"),
        "dpo",
        "tiny-llama",
    ),
    "axolotl full sft": (
        axolotl_card(
            "base_model: org/tiny-llama\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n",
            base=None,
            library="transformers",
        ),
        "sft",
        "org/tiny-llama",  # no base_model in the front matter: the config's
    ),
    "axolotl orpo": (axolotl_card("base_model: tiny-llama\nrl: ORPO\n"), "orpo", "tiny-llama"),
    "axolotl config that is not YAML": (
        axolotl_card("base_model: [unclosed\n"),
        "finetune",  # the tags still say a trainer wrote it
        "tiny-llama",
    ),
    "unsloth upload": (UNSLOTH_UPLOAD, "finetune", "unsloth/tiny-llama"),
    "unsloth sft": (
        card("base_model: unsloth/tiny-llama\ntags:\n- unsloth\n- trl\n- sft\n"),
        "sft",
        "unsloth/tiny-llama",
    ),
    "trl grpo": (
        card("base_model: b\ntags:\n- generated_from_trainer\n- trl\n- grpo\n"),
        "grpo",
        "b",
    ),
    "trl async grpo": (card("tags:\n- trl\n- async-grpo\n"), "grpo", None),
    "trl reward": (card("tags:\n- trl\n- reward-trainer\n"), "reward-model", None),
    "trl online dpo": (card("tags:\n- trl\n- online-dpo\n"), "online-dpo", None),
    "transformers trainer": (
        card("base_model: b\ntags:\n- generated_from_trainer\n"),
        "finetune",
        "b",
    ),
    "hub merge": (card("base_model:\n- a\n- b\nbase_model_relation: merge\n"), "merge", "a"),
    "hub quantized": (card("base_model: a\nbase_model_relation: quantized\n"), "quantized", "a"),
    "no card at all": ("", None, None),
    "not a card": ("just text\n", None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_method_and_base_a_card_declares(case: str, tmp_path: Path) -> None:
    text, method, base = CASES[case]
    (tmp_path / "README.md").write_text(text)
    declared = declared_lineage(tmp_path)
    assert (declared.method, declared.base) == (method, base)


def test_a_card_naming_a_training_method_wins_over_the_peft_type(tmp_path: Path) -> None:
    shutil.copytree(SAMPLES / "lora-copy", tmp_path, dirs_exist_ok=True)
    assert declared_lineage(tmp_path).method == "lora"  # PEFT's own card: no trainer named
    (tmp_path / "README.md").write_text(card("tags:\n- trl\n- kto\n"))
    assert declared_lineage(tmp_path).method == "kto"


def test_an_axolotl_lora_registers_under_its_base_as_dpo_lora(graft, tmp_path: Path) -> None:
    graft("add", SAMPLES / "tiny-llama")
    adapter = shutil.copytree(SAMPLES / "lora-copy", tmp_path / "axolotl-out")
    (adapter / "README.md").write_text(
        axolotl_card("base_model: tiny-llama\nrl: dpo\nadapter: lora\n")
    )
    graft("add", adapter)
    (row,) = [r for r in graft_json(graft, "ls") if r["name"] == "axolotl-out"]
    assert (row["method"], row["adapter_type"], row["parents"]) == ("dpo", "lora", ["tiny-llama@1"])


def test_an_unsloth_upload_finds_its_base_by_the_last_part_of_the_hub_id(graft, tmp_path: Path):
    graft("add", SAMPLES / "tiny-llama")
    model = shutil.copytree(SAMPLES / "tiny-llama-sft", tmp_path / "uploaded")
    (model / "README.md").write_text(UNSLOTH_UPLOAD)
    graft("add", model)
    (row,) = [r for r in graft_json(graft, "ls") if r["name"] == "uploaded"]
    assert (row["method"], row["adapter_type"], row["parents"]) == (
        "finetune",
        None,
        ["tiny-llama@1"],
    )
