"""Converted checkpoints reproduce the ORIGINAL libraries' own logits.

The reference models are built and run by scripts/reference/dump_ai2_olmo.py (ai2-olmo 0.6.0) and
scripts/reference/dump_olmo_core.py (ai2-olmo-core 3.0.0), each inside its own venv made by
scripts/setup_reference_envs.sh; nothing here imports those libraries. The venv pythons come from
OLMO_HF_AI2_OLMO_PYTHON / OLMO_HF_OLMO_CORE_PYTHON, else <repo>/.venvs/<name>/bin/python; cases whose
venv is absent are skipped with the reason.

Each dump is converted with olmo_hf.convert, loaded with olmo_hf's classes in float32 and run on the
reference's input ids; the max |logit diff| over all (padded) vocabulary columns must be <= 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from olmo_hf import Olmo2ForCausalLM, Olmo3ForCausalLM, OlmoForCausalLM
from olmo_hf.convert import convert_checkpoint, detect_format

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5

LIBS = {
    # name: (python env var, dump script, expected library version)
    "ai2-olmo": ("OLMO_HF_AI2_OLMO_PYTHON", "scripts/reference/dump_ai2_olmo.py", ("ai2-olmo", "0.6.0")),
    "olmo-core": ("OLMO_HF_OLMO_CORE_PYTHON", "scripts/reference/dump_olmo_core.py", ("ai2-olmo-core", "3.0.0")),
}

# Reference dumps: name -> (library, dump script args). Defaults: d_model 32, 2 layers, 4 heads,
# vocab 1000 padded to 1024 embedding rows, init_std 0.1, norm weights 1 + 0.2 N(0, 1).
DUMPS = {
    "ai2-olmo1-tied": ("ai2-olmo", ["--variant", "olmo1", "--tied", "--hf-olmo"]),
    "ai2-olmo1-untied": ("ai2-olmo", ["--variant", "olmo1", "--seed", "1", "--hf-olmo"]),
    # q/k/v std 0.6 puts a few percent of q/k/v beyond 8, so clipping changes the logits
    "ai2-olmo1-clip": ("ai2-olmo", ["--variant", "olmo1", "--clip-qkv", "8", "--qkv-std", "0.6", "--seed", "2",
                                    "--hf-olmo"]),
    "ai2-olmo1-gqa": ("ai2-olmo", ["--variant", "olmo1", "--n-kv-heads", "2", "--seed", "3", "--hf-olmo"]),
    "ai2-olmo2-mha": ("ai2-olmo", ["--variant", "olmo2", "--seed", "4"]),
    "ai2-olmo2-gqa": ("ai2-olmo", ["--variant", "olmo2", "--n-kv-heads", "2", "--seed", "5"]),
    "core-olmo2-gqa": ("olmo-core", ["--variant", "olmo2", "--n-kv-heads", "2", "--plain-model-pt", "--seed", "6"]),
    # TransformerConfig.olmo2_1M's shape: 4 heads of 4 on d_model 12, so head_dim != d_model / n_heads
    "core-olmo2-head-dim": ("olmo-core", ["--variant", "olmo2", "--d-model", "12", "--n-heads", "4", "--head-dim", "4",
                                          "--n-kv-heads", "2", "--seed", "7"]),
    "core-olmo1-clip-tied": ("olmo-core", ["--variant", "olmo1", "--clip-qkv", "8", "--qkv-std", "0.6", "--tied",
                                           "--seed", "8"]),
    # OLMo 3 (TransformerConfig.olmo3_* layout): layers 0-2 window 8, layer 3 full with YaRN x4 from 16 positions;
    # 72 input positions: nine windows, and 4.5x YaRN's original context
    "core-olmo3-swa-yarn": ("olmo-core", ["--variant", "olmo3", "--n-layers", "4", "--n-kv-heads", "2", "--window", "8",
                                          "--yarn-factor", "4", "--yarn-old-context", "16", "--seq-len", "72",
                                          "--seed", "9"]),
}


@dataclass(frozen=True)
class Case:
    id: str
    dump: str
    format: str
    subdir: str = ""  # what to convert, inside the dump directory


CASES = [
    Case("olmo1-tied", "ai2-olmo1-tied", "olmo_trainer"),
    Case("olmo1-tied-hf_olmo", "ai2-olmo1-tied", "hf_olmo", "hf_olmo"),
    Case("olmo1-untied", "ai2-olmo1-untied", "olmo_trainer"),
    Case("olmo1-clip_qkv8", "ai2-olmo1-clip", "olmo_trainer"),
    Case("olmo1-gqa", "ai2-olmo1-gqa", "olmo_trainer"),
    Case("olmo2-mha", "ai2-olmo2-mha", "olmo_trainer"),
    Case("olmo2-gqa", "ai2-olmo2-gqa", "olmo_trainer"),
    Case("olmo-core-olmo2-gqa-dcp", "core-olmo2-gqa", "olmo_core"),
    Case("olmo-core-olmo2-gqa-model.pt", "core-olmo2-gqa", "olmo_core", "plain"),
    Case("olmo-core-olmo2-head_dim", "core-olmo2-head-dim", "olmo_core"),
    Case("olmo-core-olmo1-clip_qkv8-tied", "core-olmo1-clip-tied", "olmo_core"),
    Case("olmo-core-olmo3-swa-yarn", "core-olmo3-swa-yarn", "olmo_core"),
]


def reference_python(lib: str) -> Path:
    env, _, _ = LIBS[lib]
    return Path(os.environ.get(env) or REPO / ".venvs" / lib / "bin" / "python")


@pytest.fixture(scope="session")
def reference_dumps(tmp_path_factory) -> dict[str, Path | str]:
    """Every dump, written once per session: one process per library, both running at once.

    Values are the dump directory, or the reason its library's venv is unavailable.
    """
    root = tmp_path_factory.mktemp("reference_dumps")
    result: dict[str, Path | str] = {}
    procs = []
    for lib, (env, script, _) in LIBS.items():
        python = reference_python(lib)
        names = [n for n, (dump_lib, _) in DUMPS.items() if dump_lib == lib]
        if not python.is_file():
            reason = (f"no {lib} reference venv at {python}: run scripts/setup_reference_envs.sh "
                      f"or set {env} to its python")
            result.update({n: reason for n in names})
            continue
        batch = root / f"{lib}.json"
        batch.write_text(json.dumps([["--out", str(root / n), *DUMPS[n][1]] for n in names]))
        log = open(root / f"{lib}.log", "w+")
        env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen([str(python), str(REPO / script), "--batch", str(batch)],
                                stdout=log, stderr=subprocess.STDOUT, env=env_vars, cwd=root)
        procs.append((lib, proc, log, names))
    for lib, proc, log, names in procs:
        rc = proc.wait(timeout=600)
        log.seek(0)
        output = log.read()
        log.close()
        assert rc == 0, f"{lib} reference dump failed (exit {rc}):\n{output[-3000:]}"
        result.update({n: root / n for n in names})
    return result


@pytest.fixture(scope="session")
def converted(reference_dumps, tmp_path_factory):
    """case -> (converted HF dir, reference_io dict), converting each case once."""
    root = tmp_path_factory.mktemp("converted")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(case: Case) -> tuple[Path, dict]:
        dump = reference_dumps[case.dump]
        if isinstance(dump, str):
            pytest.skip(dump)
        if case.id not in cache:
            src = dump / case.subdir if case.subdir else dump
            if case.subdir == "plain":  # the same OLMo-core step, read from model.pt instead of model_and_optim/
                src.mkdir(exist_ok=True)
                shutil.copy(dump / "config.json", src)
                shutil.copy(dump / "model.pt", src)
            assert detect_format(src) == case.format
            out = convert_checkpoint(src, root / case.id)
            cache[case.id] = (out, torch.load(dump / "reference_io.pt", weights_only=True))
        return cache[case.id]

    return get


def load_ours(path: Path, **kwargs):
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    cls = {"olmo": OlmoForCausalLM, "olmo2": Olmo2ForCausalLM, "olmo3": Olmo3ForCausalLM}[model_type]
    return cls.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_converted_logits_match_reference_library(case, attn_implementation, converted, record_property):
    path, ref = converted(case)
    model = load_ours(path, attn_implementation=attn_implementation)
    assert type(model).__module__.startswith("olmo_hf.")
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits
    expected = ref["logits"]
    # the comparison is not vacuous: real, varied logits over the full padded vocabulary
    assert logits.shape == expected.shape == (*ref["input_ids"].shape, model.config.vocab_size)
    assert expected.abs().max() > 0.5 and expected.std() > 0.1
    diff = (logits - expected).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"\n{case.id} [{attn_implementation}] max|diff| = {diff:.3g} (max|logit| {expected.abs().max().item():.3g})")
    assert diff <= TOL


@pytest.mark.parametrize("case", [c for c in CASES if "clip" in c.id], ids=lambda c: c.id)
def test_clip_qkv_changes_the_reference_logits(case, converted):
    """Guards the clip cases themselves: without clipping the same weights give different logits."""
    path, ref = converted(case)
    unclipped = load_ours(path, clip_qkv=None)
    with torch.no_grad():
        logits = unclipped(ref["input_ids"]).logits
    assert (logits - ref["logits"]).abs().max() > 1e-3


def test_head_dim_differing_from_hidden_over_heads_is_written(converted):
    path, _ = converted(next(c for c in CASES if c.id == "olmo-core-olmo2-head_dim"))
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["head_dim"]) == (12, 4, 4)


@pytest.mark.parametrize("case_id", ["olmo1-tied", "olmo-core-olmo2-gqa-dcp"])
def test_special_ids_reach_config_and_generation_config(case_id, converted):
    path, _ = converted(next(c for c in CASES if c.id == case_id))
    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (999, 998)  # the dump scripts' ids
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (999, 998)
    assert generation.get("bos_token_id") is None


@pytest.mark.parametrize("lib", list(LIBS))
def test_reference_dumps_come_from_the_pinned_library_versions(lib, reference_dumps):
    names = [n for n, (dump_lib, _) in DUMPS.items() if dump_lib == lib]
    dump = reference_dumps[names[0]]
    if isinstance(dump, str):
        pytest.skip(dump)
    versions = torch.load(dump / "reference_io.pt", weights_only=True)["versions"]
    package, version = LIBS[lib][2]
    assert versions[package] == version


HF_OLMO_DUMPS = ["ai2-olmo1-tied", "ai2-olmo1-untied", "ai2-olmo1-clip", "ai2-olmo1-gqa"]


@pytest.mark.parametrize("dump_name", HF_OLMO_DUMPS)
def test_hf_olmo_directory_loads_directly_through_auto_model(dump_name, reference_dumps):
    """No conversion step: AutoModelForCausalLM reads the legacy hf_olmo directory into our class,
    with no missing, unexpected or re-initialised weight, and reproduces ai2-olmo's logits."""
    from transformers import AutoModelForCausalLM

    dump = reference_dumps[dump_name]
    if isinstance(dump, str):
        pytest.skip(dump)
    assert json.loads((dump / "hf_olmo" / "config.json").read_text())["model_type"] == "hf_olmo"
    model, info = AutoModelForCausalLM.from_pretrained(dump / "hf_olmo", dtype=torch.float32, output_loading_info=True)
    assert type(model) is OlmoForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref = torch.load(dump / "reference_io.pt", weights_only=True)
    with torch.no_grad():
        diff = (model.eval()(ref["input_ids"]).logits - ref["logits"]).abs().max().item()
    assert diff <= TOL


def test_olmo_core_olmo3_converts_to_sliding_windows_and_yarn_on_full_layers_only(converted):
    path, ref = converted(next(c for c in CASES if c.id == "olmo-core-olmo3-swa-yarn"))
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "olmo3" and config["sliding_window"] == 8  # OLMo-core window 8 = flash (7, 0)
    assert config["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert config["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    full = config["rope_parameters"]["full_attention"]
    assert (full["rope_type"], full["factor"], full["original_max_position_embeddings"]) == ("yarn", 4.0, 16)


@pytest.mark.parametrize(
    "change",
    [dict(sliding_window=None, layer_types=["full_attention"] * 4), dict(rope_parameters={"rope_type": "default"})],
    ids=["no-window", "no-yarn"],
)
def test_olmo3_window_and_yarn_each_change_the_reference_logits(change, converted):
    """Guards the OLMo 3 case: without the window, or without YaRN, the same weights give other logits."""
    path, ref = converted(next(c for c in CASES if c.id == "olmo-core-olmo3-swa-yarn"))
    if "rope_parameters" in change:
        change = dict(rope_parameters={lt: {"rope_type": "default", "rope_theta": 500000.0}
                                       for lt in ("sliding_attention", "full_attention")})
    with torch.no_grad():
        logits = load_ours(path, **change)(ref["input_ids"]).logits
    assert (logits - ref["logits"]).abs().max() > 1e-3
