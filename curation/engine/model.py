"""Model loading and the one place where conversations become token ids and labels.

Every stage (warmup, train features, validation features) formats text through `encode`,
so train and validation sides can never drift apart (METHODS.md, prompt-format note).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from curation.engine.settings import ModelConfig, config_from_dict  # noqa: F401 (re-exported)
from curation.errors import CurationError

if TYPE_CHECKING:  # torch loads when a function here needs it: the config and the CLI do not
    import torch

Messages = Sequence[dict[str, str]]
Progress = Callable[[str, int, int], None]
IGNORE = -100  # label value that the loss skips (HF convention)

ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

# The tulu / open-instruct format of the reference pool, as LESS's `concat_messages` writes it:
# contents are stripped, each assistant turn ends with eos, every turn ends with "\n".
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + (message['content'] | trim) + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + (message['content'] | trim) + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + (message['content'] | trim) + eos_token + '\n' }}"
    "{% else %}{{ raise_exception('Invalid role: ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `ModelConfig.dtype` (one of `settings.DTYPE_NAMES`)."""
    import torch
    return getattr(torch, name)


def resolve_device(device: str) -> torch.device:
    """Turn "auto" into cuda when present; fail early (not mid-run) when cuda is asked but absent."""
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurationError(f"device {device!r} was requested but no CUDA GPU is available")
    return torch.device(device)


def pad_token_id(tokenizer) -> int:
    """Pad id for `collate`; many causal LMs have none, and any id works under a zero mask."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def tokenizer_hash(tokenizer) -> str:
    """Stable 16-hex fingerprint of vocabulary, merges, special tokens and chat template.

    Cached on the tokenizer object (50 ms each; a run asks several times), keyed by what a
    caller may change in place: the chat template and the vocabulary size."""
    stamp = (tokenizer.chat_template, len(tokenizer))
    cached = getattr(tokenizer, "_curation_hash", None)
    if cached is None or cached[0] != stamp:
        cached = tokenizer._curation_hash = (stamp, _tokenizer_hash(tokenizer))
    return cached[1]


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for runtime_key in ("truncation", "padding"):  # call-time settings, not identity
            spec.pop(runtime_key, None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([spec, _special_tokens(tokenizer), tokenizer.chat_template or ""],
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _special_tokens(tokenizer) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}


# ---------------------------------------------------------------- formatting


def _tulu(messages: Messages, eos: str, add_generation_prompt: bool) -> str:
    parts = []
    for m in messages:
        if m["role"] not in ROLE_TAGS:
            raise CurationError(f"invalid message role {m['role']!r} (system, user, assistant)")
        tail = eos + "\n" if m["role"] == "assistant" else "\n"
        parts.append(f"{ROLE_TAGS[m['role']]}\n{m['content'].strip()}{tail}")
    return "".join(parts) + ("<|assistant|>\n" if add_generation_prompt else "")


def render_text(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it: chat template, or the LESS tulu format without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return _tulu(messages, tokenizer.eos_token or "", add_generation_prompt)


def format_conversation(tokenizer, messages: Messages) -> str:
    """The training text: the tokenizer's chat template if it has one, else the tulu format."""
    return render_text(tokenizer, messages)


def _assistant_spans(tokenizer, messages: Messages, text: str) -> list[tuple[int, int]]:
    """Character spans of every assistant turn (content + end-of-turn tokens) in `text`.

    Rendering the prefixes gives exact spans for prefix-stable templates (tulu, most chat
    templates); otherwise fall back to locating the stripped content itself.
    """
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = render_text(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_text(tokenizer, messages[: i + 1])
        if text.startswith(upto) and upto.startswith(head) and len(head) >= cursor:
            spans.append((len(head), len(upto)))
        else:
            start = text.find(m["content"].strip(), cursor)
            if start < 0:
                raise CurationError("chat template output does not contain the assistant reply")
            spans.append((start, start + len(m["content"].strip())))
        cursor = spans[-1][1]
    return spans


def _truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut to `max_length` tokens, keeping the prompt and cutting the response from the right.

    When the prompt alone is too long, the response keeps its first min(len, max_length // 2)
    tokens and the prompt keeps its *last* tokens: the end of a prompt (the actual question,
    the role header) matters most for predicting the reply, and an example without any
    response token would carry no gradient.
    """
    n = len(ids)
    if n <= max_length:
        return ids, labels
    first = next((i for i, lab in enumerate(labels) if lab != IGNORE), n)
    if first < max_length:
        return ids[:max_length], labels[:max_length]
    keep = min(n - first, max_length // 2)
    lo, hi = first + keep - max_length, first + keep
    return ids[lo:hi], labels[lo:hi]


def encode(tokenizer, messages: Messages, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels; labels are -100 everywhere except on assistant turns (all of them).

    A token is labelled when it overlaps an assistant span, so the role header before a
    reply is never trained on but the reply's end-of-turn token (eos) is, as in LESS; a token
    that straddles the boundary (" 5" after "[/INST]") counts as reply.
    Needs a fast tokenizer (character offsets).
    """
    if not messages:
        raise CurationError("a conversation needs at least one message")
    text = render_text(tokenizer, messages)
    spans = _assistant_spans(tokenizer, messages, text)
    try:
        enc = tokenizer(text, add_special_tokens=not tokenizer.chat_template,
                        return_offsets_mapping=True, verbose=False)  # we truncate below
    except NotImplementedError as exc:
        raise CurationError("encoding needs a fast tokenizer (character offsets)") from exc
    ids = list(enc["input_ids"])
    labels = [tid if e > s and any(s < b and e > a for a, b in spans) else IGNORE
              for tid, (s, e) in zip(ids, enc["offset_mapping"])]
    ids, labels = _truncate(ids, labels, max_length)
    return {"input_ids": ids, "labels": labels}


def encode_pair(tokenizer, prompt_messages: Messages, response: str,
                max_length: int) -> dict[str, list[int]]:
    """Encode (prompt, response) exactly as a pool example would be: one formatting path."""
    return encode(tokenizer, [*prompt_messages, {"role": "assistant", "content": response}], max_length)


# ---------------------------------------------------------------- batching


def collate(encoded: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; pads get attention 0 and label -100."""
    import torch
    if not encoded:
        raise CurationError("cannot collate an empty batch")
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(e["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices of similar length (little padding); ties broken by index, so deterministic."""
    if batch_size < 1:
        raise CurationError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def padded_length(n_tokens: int, max_length: int) -> int:
    """The sequence length an item of ``n_tokens`` is padded to for feature extraction.

    Why a fixed length per item: on CPU the batched kernels give each row bit-identical
    results whatever its batch companions are, *if* the padded length is the same (measured:
    a different padding length changes the last bits, a different batch size does not). So
    each item is padded to a length that depends on its own length only: rounded up to an
    eighth of its power of two (at least 16; at most 12.5% padding), capped at ``max_length``.
    That makes stored features independent of which examples shared a shard, so features
    extracted incrementally equal a full extraction byte for byte.
    """
    if n_tokens < 1:
        raise ValueError("an item has at least one token")
    quantum = max(16, (1 << (n_tokens.bit_length() - 1)) // 8)
    return max(n_tokens, min(-(-n_tokens // quantum) * quantum, max_length))


def fixed_length_buckets(lengths: Sequence[int], batch_size: int, max_length: int
                         ) -> list[tuple[int, list[int]]]:
    """``(padded length, indices)`` batches: items of one padded length only (see
    `padded_length`), in index order within a length; deterministic."""
    if batch_size < 1:
        raise CurationError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(padded_length(n, max_length), []).append(i)
    return [(t, idx[s: s + batch_size]) for t, idx in sorted(groups.items())
            for s in range(0, len(idx), batch_size)]
