"""What a trainer needs beside an exported file, so an export is ready to train on as written.

* TRL (``messages``, ``prompt_completion``): nothing beside the file; the manifest says how to load it.
* LLaMA-Factory (``alpaca``, ``sharegpt``): a ``dataset_info.json`` naming the file and its
  columns, in the export's own folder (``dataset_dir`` = that folder, ``dataset`` = the export's
  name). It is not merged into a file shared by all exports: that file would change outside the
  export's one atomic rename.
* axolotl (``axolotl``): the ``datasets:`` entry of its YAML config (``type: chat_template``).
"""

from __future__ import annotations

import json
from pathlib import Path


# Export formats, and how the Curate page and the CLI name them.
FORMATS = ("original", "messages", "prompt_completion", "alpaca", "sharegpt", "axolotl")
FORMAT_LABELS = {"original": "original records, as imported",
                 "messages": "TRL conversational (messages)",
                 "prompt_completion": "TRL prompt / completion (conversational)",
                 "alpaca": "LLaMA-Factory alpaca (+ dataset_info.json)",
                 "sharegpt": "LLaMA-Factory sharegpt (+ dataset_info.json)",
                 "axolotl": "axolotl chat_template (+ datasets: YAML)"}
TRAINERS = {"messages": "trl", "prompt_completion": "trl", "alpaca": "llamafactory",
            "sharegpt": "llamafactory", "axolotl": "axolotl"}
DATASET_INFO = "dataset_info.json"

# LLaMA-Factory's alpaca column names (its keys) -> the keys `export._alpaca` writes.
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                   "history": "history"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}


def llamafactory_entry(fmt: str, file_name: str, keys: set[str]) -> dict:
    """The ``dataset_info.json`` value for one export; lists only columns some row has (LLaMA-Factory
    fails on a named column the file lacks)."""
    if fmt == "alpaca":
        return {"file_name": file_name, "formatting": "alpaca",
                "columns": {k: v for k, v in _ALPACA_COLUMNS.items() if v in keys}}
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"}, "tags": dict(SHAREGPT_TAGS)}


def axolotl_entry(path: Path) -> dict:
    """One item of axolotl's ``datasets:`` list for a ``{"messages": [...]}`` JSONL file."""
    return {"path": str(path.resolve()), "ds_type": "json", "type": "chat_template", "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            "roles_to_train": ["assistant"], "train_on_eos": "turn"}


def trainer_info(fmt: str, path: Path, keys: set[str]) -> dict | None:
    """The manifest's ``trainer`` section: which trainer reads the file and how (None: no trainer format)."""
    trainer, name = TRAINERS.get(fmt), path.name.removesuffix(".jsonl")
    if trainer == "trl":
        kind = "conversational language modeling" if fmt == "messages" else "conversational prompt-completion"
        return {"trainer": "trl", "dataset_type": kind,
                "load": f"datasets.load_dataset('json', data_files={str(path.resolve())!r}, split='train')"}
    if trainer == "llamafactory":
        return {"trainer": "llamafactory", "dataset_info_file": DATASET_INFO,
                "dataset_dir": str(path.parent.resolve()), "dataset": name,
                "dataset_info": {name: llamafactory_entry(fmt, path.name, keys)}}
    if trainer == "axolotl":
        return {"trainer": "axolotl", "config_file": f"{name}.axolotl.yml", "datasets": [axolotl_entry(path)]}
    return None


def side_files(info: dict | None) -> dict[str, bytes]:
    """File name -> contents of what goes beside the export for its trainer."""
    import yaml  # pyyaml: axolotl's own config format

    if not info or info["trainer"] == "trl":
        return {}
    if info["trainer"] == "llamafactory":
        return {info["dataset_info_file"]: json.dumps(info["dataset_info"], indent=2, ensure_ascii=False).encode()}
    return {info["config_file"]: yaml.safe_dump({"datasets": info["datasets"]}, sort_keys=False).encode()}
