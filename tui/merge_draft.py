"""The merge builder's form as data: what was typed, checked field by field, and the
mergekit-style config (or, for the extract target, the `graft extract` run) it stands for.

The builder screen only renders a `Draft` and calls `problems()` and `document()`;
the checks themselves come from the method registry (`merge.methods`), so the form,
the YAML files and `graft merge` accept exactly the same values.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from graft.merge.methods import METHODS, Method, Param

DTYPES = ("bfloat16", "float16", "float32")

# Beside the merge methods, the builder's one other target: a fine-tune's change
# as a LoRA adapter of its base (`graft extract`).
EXTRACT = "extract"
TARGETS = (*METHODS, EXTRACT)


@dataclass(frozen=True)
class Fields:
    """What the form asks for one target."""

    doc: str
    uses_base: bool
    input_params: tuple[Param, ...] = ()
    global_params: tuple[Param, ...] = ()


def fields_of(target: str) -> Fields:
    if target == EXTRACT:
        return Fields("the fine-tune's change as a rank-R LoRA of the base (truncated SVD)", True)
    method = METHODS[target]
    return Fields(method.reference, method.uses_base, method.input_params, method.global_params)


# A new input's weight starts at 1 (every method that takes a weight requires one);
# other required values start empty, so the form asks for them.
STARTING_VALUES = {"weight": "1"}


def input_key(ref: str, param: str) -> str:
    """The field key of one input's parameter, as used in `Draft.problems()`."""
    return f"{ref}.{param}"


def global_key(param: str) -> str:
    return f"parameters.{param}"


@dataclass(frozen=True)
class Draft:
    """Everything the builder's form holds. Texts are as typed; empty means "the default".

    `input_values` maps `input_key(ref, param)` to its text, `global_values` maps a
    global parameter's name to its text (floats) or value (bools).
    """

    method: str
    base: str | None
    inputs: tuple[str, ...]
    input_values: Mapping[str, str] = field(default_factory=dict)
    global_values: Mapping[str, str | bool] = field(default_factory=dict)
    seed: str = "0"
    rank: str = ""  # of a merged adapter; empty: exact (linear) or the inputs' total
    name: str = ""
    out_dir: str = ""  # empty: ./NAME
    dtype: str | None = None
    union: bool = False  # tokenizer_source: union (inputs whose vocabularies differ)
    kinds: Mapping[str, str] = field(default_factory=dict)  # ref → artifact kind, if known

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def extracts(self) -> bool:
        return self.method == EXTRACT

    @property
    def base_used(self) -> str | None:
        """The base, when the method takes one (linear and passthrough do not)."""
        return self.base if fields_of(self.method).uses_base else None

    @property
    def output(self) -> Path:
        return Path(self.out_dir.strip() or f"./{self.name.strip()}").expanduser()

    def problems(self) -> dict[str, str]:
        """Field key → what is wrong with it, for every field that cannot run as is.

        Keys: "base", "inputs", "seed", "rank", "name", "folder", `input_key(...)` and
        `global_key(...)`.
        """
        out = self._extract_problems() if self.extracts else self._merge_problems()
        seed = _whole(self.seed)
        if seed is None or seed < 0:
            out["seed"] = "must be a whole number ≥ 0"
        rank = _whole(self.rank)
        if self.rank.strip() and (rank is None or rank < 1):
            out["rank"] = "must be a whole number ≥ 1" + ("" if self.extracts else ", or empty")
        name = self.name.strip()
        if not name or "@" in name or "/" in name:
            out["name"] = "name the new artifact (no @ or /)"
        elif self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            out["folder"] = f"{self.output} already exists: choose another name or folder"
        return out

    def _extract_problems(self) -> dict[str, str]:
        out = {}
        if self.base is None:
            out["base"] = "extract needs the base the fine-tune came from"
        if len(self.inputs) != 1 or self.kinds.get(self.inputs[0]) == "adapter":
            out["inputs"] = "pick the one fine-tuned model to extract"
        if not self.rank.strip():
            out["rank"] = "the adapter's rank is needed"
        return out

    def _merge_problems(self) -> dict[str, str]:
        out: dict[str, str] = {}
        method = self.spec
        if method.needs_base and self.base is None:
            out["base"] = f"{method.name} needs a base model"
        count = len(self.inputs)
        if count == 0:
            out["inputs"] = "choose the models or adapters to merge"
        else:
            adapters = [r for r in self.inputs if self.kinds.get(r) == "adapter"]
            if adapters and len(adapters) < count:
                out["inputs"] = "pick only full models, or only LoRA adapters"
            elif adapters and self.union:
                out["inputs"] = "a tokenizer union merges full models, not adapters"
            problem = method.check_input_count(count)
            if problem:
                out["inputs"] = problem
        for ref in self.inputs:
            resolved: dict[str, float | bool] = {}
            for param in method.input_params:
                key = input_key(ref, param.name)
                text = self.input_values.get(key, "")
                problem = _float_problem(param, text)
                value = param.default if problem or not text.strip() else float(text)
                if problem:
                    out[key] = problem
                elif value is not None:
                    resolved[param.name] = value
            if len(resolved) == len(method.input_params):
                problem = method.check_combination(resolved)
                if problem:  # DELLA's density ± epsilon: shown on the last of them
                    out[input_key(ref, method.input_params[-1].name)] = problem
        for param in method.global_params:
            if param.kind != "bool":
                problem = _float_problem(param, str(self.global_values.get(param.name, "")))
                if problem:
                    out[global_key(param.name)] = problem
        return out

    def document(self) -> dict[str, Any]:
        """The config as a mergekit-style mapping; fields with problems are left out."""
        method = self.spec
        problems = self.problems()
        doc: dict[str, Any] = {"merge_method": method.name}
        if self.base_used is not None:
            doc["base_model"] = self.base_used
        models = []
        for ref in self.inputs:
            entry: dict[str, Any] = {"model": ref}
            params = {}
            for param in method.input_params:
                key = input_key(ref, param.name)
                text = self.input_values.get(key, "").strip()
                if text and key not in problems:
                    params[param.name] = _number(text)
            if params:
                entry["parameters"] = params
            models.append(entry)
        if models:
            doc["models"] = models
        params = {}
        for param in method.global_params:
            value = self.global_values.get(param.name, "")
            if isinstance(value, bool):
                if value != param.default:
                    params[param.name] = value
            elif value.strip() and global_key(param.name) not in problems:
                params[param.name] = _number(value)
        if params:
            doc["parameters"] = params
        if self.dtype:
            doc["dtype"] = self.dtype
        if self.union:
            doc["tokenizer_source"] = "union"
        return doc

    def yaml(self) -> str:
        """The merge config (nothing for an extraction, which has none)."""
        return "" if self.extracts else yaml.safe_dump(self.document(), sort_keys=False)

    def command(self) -> str:
        """The `graft merge` line that runs this draft saved as NAME.yaml (or the
        `graft extract` line)."""
        name = self.name.strip() or "NAME"
        out = ["--out", self.out_dir.strip() or f"./{name}"]
        if self.out_dir.strip():  # the name no longer follows from the folder
            out += ["--name", name]
        problems = self.problems()  # like the YAML, the line leaves bad values out
        if self.extracts:
            tuned = self.inputs[0] if "inputs" not in problems else "REF"
            rank = self.rank.strip() if "rank" not in problems else "R"
            words = ["graft", "extract", tuned, "--base", self.base or "BASE", "--rank", rank]
            return shlex.join(words + out)
        words = ["graft", "merge", f"{name}.yaml", *out]
        if self.seed.strip() not in ("", "0") and "seed" not in problems:
            words += ["--seed", self.seed.strip()]
        if self.rank.strip() and "rank" not in problems:
            words += ["--rank", self.rank.strip()]
        return shlex.join(words)


def _float_problem(param: Param, text: str) -> str | None:
    text = text.strip()
    if not text:
        return "required" if param.required else None
    try:
        value = float(text)
    except ValueError:
        return f"must be a number, not {text!r}"
    return param.check(value)


def _whole(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _number(text: str) -> float | int:
    """`1` stays 1 in the YAML, `0.5` is 0.5."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
