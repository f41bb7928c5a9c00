"""Language models that answer chat requests: an OpenAI-compatible endpoint, or a Hugging
Face causal LM from a local directory run in this process, behind a request-keyed cache.

A request is the chat-completions body (``model``, ``messages``, ``temperature``,
``max_tokens``); ``answer`` returns, per request, its reply's text or the ``PixmoError``
that kept it from one, so a caller records a failure and goes on. An endpoint gets up to
``concurrency`` requests at once, each through ``pixmo.fetch`` (bounded time and size, the
downloader's retries). A local model answers greedily, ``batch_size`` prompts per
``generate`` (left-padded, its tokenizer's chat template); its name carries a hash of its
directory's files, so another model (or the same name with other weights) is another
cache key. The cache is a folder (a path or an fsspec URL) of replies named by the hash
of their request: a request seen before is never sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pixmo import remote
from pixmo.errors import PixmoError
from pixmo.fetch import FetchConfig, FetchError, fetch_bytes

log = logging.getLogger(__name__)

HF = "hf:"  # a local model's address: hf:DIR

Reply = str | PixmoError


class ChatModel(Protocol):
    name: str  # what requests name as their ``model``

    def answer(self, requests: Sequence[dict[str, Any]]) -> list[Reply]: ...


def request(model: str, prompt: str, system: str | None, temperature: float,
            max_tokens: int) -> dict[str, Any]:
    """A chat-completions body of one user prompt (after a system prompt, if any)."""
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"model": model, "messages": messages, "temperature": temperature,
            "max_tokens": max_tokens}


class Endpoint:
    """Chat completions at ``base_url`` (ending before ``/chat/completions``); the API key,
    if any, comes from the environment variable ``api_key_env``, never from a config."""

    def __init__(self, base_url: str, model: str, fetch: FetchConfig, concurrency: int = 1,
                 api_key_env: str | None = None,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name, self.fetch, self.sleep = model, fetch, sleep
        self.concurrency = concurrency
        self.api_key = os.environ.get(api_key_env) if api_key_env else None

    def answer(self, requests: Sequence[dict[str, Any]]) -> list[Reply]:
        if self.concurrency == 1 or len(requests) < 2:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(min(self.concurrency, len(requests)),
                                thread_name_prefix="pixmo-llm") as pool:
            return list(pool.map(self._one, requests))

    def _one(self, body: dict[str, Any]) -> Reply:
        try:
            return self._post(body)
        except PixmoError as e:
            return e

    def _post(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            raw = fetch_bytes(self.url, self.fetch, data=json.dumps(body).encode("utf-8"),
                              headers=headers, sleep=self.sleep)
        except FetchError as e:
            if e.retryable or e.status is None or e.status < 400:  # not the status: the body
                raise
            raise PixmoError(f"chat endpoint answered {e.reason}", file=self.url) from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise PixmoError(f"reply is not a chat completion: {raw[:200]!r}",
                             file=self.url) from e
        if not isinstance(content, str):
            raise PixmoError(f"reply content is {type(content).__name__}, not text", file=self.url)
        return content.strip()

    def failure(self, error: PixmoError) -> str:
        """A failure's detail: what the endpoint did, after how many tries."""
        if not isinstance(error, FetchError) or not error.retryable:
            return error.reason
        what = (f"HTTP {error.status}" if error.status is not None
                else f"no answer within {self.fetch.timeout_s} s: {error.reason}")
        return f"{what} after {self.fetch.retries} retries"


def directory_sha256(directory: str | os.PathLike[str]) -> str:
    """A hash of every file's name and bytes' sha256 under ``directory`` (hidden ones
    aside)."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        digest.update(f"{rel}\0{remote.file_sha256(path)}\0".encode())
    return digest.hexdigest()


def local_tokenizer(directory: str) -> Any:
    """The tokenizer of a local model directory, left-padding, with a chat template; a
    one-line error where transformers is missing or the directory is not such a model.
    Cheap, so a command checks it before any worker loads the model."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise PixmoError("hf: models need transformers and torch (pip install "
                         "'pixmo-toolkit[captions-hf]')", field="captions.llm.base_url") from e
    if not Path(directory, "config.json").is_file():
        raise PixmoError("no such model directory (no config.json)", file=directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if not tokenizer.chat_template:
        raise PixmoError("the tokenizer has no chat template", file=directory)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class LocalModel:
    """A transformers causal LM and its tokenizer from ``directory`` (no download), on CUDA
    when ``device`` is auto and one is present. Greedy: the same prompts give the same
    replies. ``name`` is ``hf:<directory name>@<16 hex of directory_sha256>``."""

    def __init__(self, directory: str, batch_size: int = 8, device: str = "auto") -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = local_tokenizer(directory)
        self.torch, self.batch_size = torch, batch_size
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" \
            else device
        self.name = f"{HF}{Path(directory).name}@{directory_sha256(directory)[:16]}"
        self.model = AutoModelForCausalLM.from_pretrained(
            directory, local_files_only=True, torch_dtype="auto").to(self.device).eval()

    def answer(self, requests: Sequence[dict[str, Any]]) -> list[Reply]:
        """Replies in ``batch_size`` batches of prompts of similar length (less padding)."""
        prompts = [self.tokenizer.apply_chat_template(r["messages"], tokenize=False,
                                                      add_generation_prompt=True)
                   for r in requests]
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        replies: list[Reply] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            max_tokens = max(requests[i]["max_tokens"] for i in chunk)
            texts = self._batch([prompts[i] for i in chunk], max_tokens)
            for i, text in zip(chunk, texts, strict=True):
                replies[i] = text
        return replies

    def _batch(self, prompts: list[str], max_new_tokens: int) -> list[Reply]:
        """``generate``, or where it fails (out of memory, a prompt longer than the model
        takes), each prompt alone: only the prompts that fail alone are failures."""
        try:
            return list(self.generate(prompts, max_new_tokens))
        except (RuntimeError, ValueError, IndexError) as e:
            if len(prompts) > 1:
                return [self._batch([p], max_new_tokens)[0] for p in prompts]
            return [PixmoError(f"generation failed: {e}".splitlines()[0])]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts``, batched, special tokens dropped."""
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                add_special_tokens=False).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


class ReplyCache:
    """Replies by request hash in ``folder`` (a path or fsspec URL; None: no cache), each
    with its request: ``folder/ab/ab12….json``."""

    def __init__(self, folder: str | None) -> None:
        self.folder = remote.Folder(folder) if folder else None

    @staticmethod
    def _name(body: dict[str, Any]) -> str:
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return f"{key[:2]}/{key}.json"

    def get(self, body: dict[str, Any]) -> str | None:
        """The cached reply, or None: none cached, or an entry that is not one (damaged
        outside the build, since entries are written whole), which is asked again."""
        if self.folder is None or not self.folder.is_file(name := self._name(body)):
            return None
        try:
            content = json.loads(self.folder.read_bytes(name))["content"]
        except (ValueError, KeyError, TypeError):
            content = None
        if not isinstance(content, str):
            log.warning("caption cache entry %s is not a reply: asking again", name)
            return None
        return content

    def put(self, body: dict[str, Any], content: str) -> None:
        if self.folder is not None:
            entry = {"request": body, "content": content}
            self.folder.write_bytes(self._name(body),
                                    json.dumps(entry, ensure_ascii=False).encode("utf-8"))


def answer(model: ChatModel, cache: ReplyCache, requests: Sequence[dict[str, Any]]
           ) -> list[Reply]:
    """Each request's reply: from ``cache``, else from ``model`` (and then cached, failures
    and empty replies aside, so a re-run asks again)."""
    replies: list[Reply | None] = [cache.get(r) for r in requests]
    missing = [i for i, reply in enumerate(replies) if reply is None]
    for i, reply in zip(missing, model.answer([requests[i] for i in missing]), strict=True):
        replies[i] = reply
        if isinstance(reply, str) and reply.strip():
            cache.put(requests[i], reply)
    return replies  # type: ignore[return-value]
