"""A small typed client for Kubeforge models on Triton (HTTP or gRPC, binary tensors).

Sends text (tokenised with the tokenizer shipped in the repository) or token ids, and returns
logits, reward scores or generated text (greedy or sampled; uses `<model>_kv` when it is loaded).
HTTP always uses binary tensor data: JSON-encoded logits are very slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import ServingError
from .repository import KV_SUFFIX, META_FILE, TOKENIZER_DIR

Protocol = Literal["http", "grpc"]
_NP_TO_TRITON = {
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.bool_): "BOOL",
}


class TritonLMClient:
    """Client for one model (and its optional KV-cache twin) on one Triton server."""

    def __init__(
        self,
        url: str,
        model: str,
        protocol: Protocol = "grpc",
        tokenizer: str | Path | None = None,
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url, self.model, self.protocol, self.timeout = url, model, protocol, timeout
        if protocol == "http":
            import tritonclient.http as tc

            self._tc: Any = tc
            self._client: Any = tc.InferenceServerClient(url=url, network_timeout=timeout, connection_timeout=timeout)
        elif protocol == "grpc":
            import tritonclient.grpc as tcg

            self._tc = tcg
            self._client = tcg.InferenceServerClient(url=url)
        else:
            raise ServingError(f"protocol must be http or grpc, got {protocol!r}", reason="InvalidProtocol")
        self.tokenizer: Any = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
            if self.tokenizer.pad_token_id is not None:
                pad_token_id = int(self.tokenizer.pad_token_id)
            if eos_token_id is None and self.tokenizer.eos_token_id is not None:
                eos_token_id = int(self.tokenizer.eos_token_id)
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

    @classmethod
    def from_repository(
        cls, repository: str | Path, model: str, url: str, protocol: Protocol = "grpc"
    ) -> TritonLMClient:
        """Client configured from `<repo>/<model>/kubeforge.json` and `tokenizer/`."""
        mdir = Path(repository) / model
        meta = json.loads((mdir / META_FILE).read_text()) if (mdir / META_FILE).is_file() else {}
        tok = mdir / TOKENIZER_DIR
        return cls(
            url,
            model,
            protocol,
            tokenizer=tok if tok.is_dir() else None,
            pad_token_id=int(meta.get("padTokenId", 0)),
            eos_token_id=meta.get("eosTokenId"),
        )

    # ------------------------------------------------------------ raw

    @property
    def raw(self) -> Any:
        """The underlying tritonclient InferenceServerClient."""
        return self._client

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        model: str | None = None,
        version: str = "",
        outputs: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One request; returns the requested (default: all) outputs as numpy arrays."""
        reqs = []
        for name, arr in inputs.items():
            arr = np.ascontiguousarray(arr)
            dtype = _NP_TO_TRITON.get(arr.dtype)
            if dtype is None:
                raise ServingError(f"input {name}: unsupported dtype {arr.dtype}", reason="InvalidRequest")
            inp = self._tc.InferInput(name, list(arr.shape), dtype)
            if self.protocol == "http":
                inp.set_data_from_numpy(arr, binary_data=True)
            else:
                inp.set_data_from_numpy(arr)
            reqs.append(inp)
        req_out = None
        if outputs:
            if self.protocol == "http":
                req_out = [self._tc.InferRequestedOutput(o, binary_data=True) for o in outputs]
            else:
                req_out = [self._tc.InferRequestedOutput(o) for o in outputs]
        kwargs: dict[str, Any] = {"model_version": version, "outputs": req_out}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        res = self._client.infer(model or self.model, reqs, **kwargs)
        names = outputs or [o["name"] for o in self._output_meta(res)]
        return {n: res.as_numpy(n) for n in names}

    def _output_meta(self, res: Any) -> list[dict[str, Any]]:
        if self.protocol == "http":
            return list(res.get_response()["outputs"])
        return list(res.get_response(as_json=True)["outputs"])

    def metadata(self, model: str | None = None) -> dict[str, Any]:
        """Model metadata as a dict (shapes as ints for both protocols)."""
        if self.protocol == "http":
            meta = dict(self._client.get_model_metadata(model or self.model))
        else:
            meta = dict(self._client.get_model_metadata(model or self.model, as_json=True))
        for section in ("inputs", "outputs"):
            for t in meta.get(section, []):
                t["shape"] = [int(d) for d in t.get("shape", [])]
        return meta

    def is_ready(self, model: str | None = None, version: str = "") -> bool:
        try:
            return bool(self._client.is_model_ready(model or self.model, version))
        except Exception:
            return False

    # ------------------------------------------------------------ text

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Right-padded token ids and mask (the server pads the same way when it batches)."""
        if self.tokenizer is None:
            raise ServingError("no tokenizer: pass tokenizer= or use from_repository()", reason="TokenizerMissing")
        seqs = [self.tokenizer(t)["input_ids"] for t in texts]
        longest = max(len(s) for s in seqs)
        ids = np.full((len(seqs), longest), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), longest), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def logits(
        self, input_ids: np.ndarray | list[list[int]], attention_mask: np.ndarray | None = None, version: str = ""
    ) -> np.ndarray:
        """Logits for token ids ([batch, seq, vocab] for LMs, [batch, labels] for classifiers)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        return self.infer({"input_ids": ids, "attention_mask": mask}, version=version, outputs=["logits"])["logits"]

    def text_logits(self, texts: list[str]) -> np.ndarray:
        enc = self.encode(texts)
        return self.logits(enc["input_ids"], enc["attention_mask"])

    def scores(self, texts: list[str]) -> list[float]:
        """Reward-model scores (first logit per text)."""
        out = self.text_logits(texts)
        return [float(x) for x in out.reshape(len(texts), -1)[:, 0]]

    def _kv_spec(self) -> tuple[list[str], int, int] | None:
        kv = self.model + KV_SUFFIX
        if not self.is_ready(kv):
            return None
        past = [t for t in self.metadata(kv)["inputs"] if t["name"].startswith("past_key_values.")]
        if not past:
            return None
        return [t["name"] for t in past], int(past[0]["shape"][1]), int(past[0]["shape"][3])

    def generate_ids(
        self,
        prompt_ids: list[int],
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int | None = None,
        use_kv: bool = True,
        min_new_tokens: int = 0,
    ) -> list[int]:
        """Greedy (temperature 0) or sampled continuation; stops at eos.

        `min_new_tokens` masks eos for the first tokens (transformers' generate() semantics), so a smoke
        request shows what the model says even when its first choice would be to stop.
        """
        rng = np.random.default_rng(seed)
        kv = self._kv_spec() if use_kv else None
        ids = list(prompt_ids)
        new: list[int] = []
        past: dict[str, np.ndarray] | None = None
        for _ in range(max_new_tokens):
            if kv is not None:
                names, heads, hd = kv
                if past is None:
                    past = {n: np.zeros((1, heads, 0, hd), np.float32) for n in names}
                    step = np.asarray([ids], np.int64)
                else:
                    step = np.asarray([[ids[-1]]], np.int64)
                total = len(ids)
                feeds = {
                    "input_ids": step,
                    "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.arange(total - step.shape[1], total, dtype=np.int64)[None, :],
                    **past,
                }
                out = self.infer(feeds, model=self.model + KV_SUFFIX)
                last = out["logits"][0, -1]
                past = {n: out[n.replace("past_key_values.", "present.")] for n in names}
            else:
                last = self.logits([ids])[0, -1]
            scores = last.astype(np.float64)
            if self.eos_token_id is not None and len(new) < min_new_tokens:
                scores[self.eos_token_id] = -np.inf
            tok = _pick(scores, temperature, top_k, rng)
            ids.append(tok)
            new.append(tok)
            if self.eos_token_id is not None and tok == self.eos_token_id:
                break
        return new

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> str:
        """Generated text for a prompt (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ServingError("no tokenizer: pass tokenizer= or use from_repository()", reason="TokenizerMissing")
        ids = self.tokenizer(prompt)["input_ids"]
        out = self.generate_ids(ids, max_new_tokens, temperature, top_k, seed, min_new_tokens=min_new_tokens)
        return str(self.tokenizer.decode(out, skip_special_tokens=True))

    def close(self) -> None:
        self._client.close()


def _pick(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if top_k > 0:
        cut = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < cut, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def load_model(client: TritonLMClient, model: str, config: str | None = None) -> None:
    """Explicit-mode load (or reload with a JSON config override)."""
    if config is None:
        client.raw.load_model(model)
    else:
        client.raw.load_model(model, config=config)


def switch_version(client: TritonLMClient, model: str, config: Any, old: int, new: int) -> None:
    """Zero-downtime switch: serve {old, new}, then only {new}.

    Triton keeps serving loaded versions while it loads others, and requests without a version go
    to the newest ready one, so clients never see the model unavailable.
    """
    from .repository import config_json, with_versions

    load_model(client, model, config_json(with_versions(config, [old, new])))
    load_model(client, model, config_json(with_versions(config, [new])))
