"""Tensor parallelism: ``torchrun --nproc-per-node 2`` on CPU (gloo) loads OLMo and OLMo 2 checkpoints through
our classes with ``tp_plan="auto"`` and reproduces a single-process load.

One torchrun launch (tests/tp_worker.py, 2 ranks, one thread each) loads two tiny checkpoints -- an OLMo 2 with
grouped-query attention (4 heads, 2 kv heads) and an OLMo with ``clip_qkv`` -- each through both APIs
(``distributed_config=DistributedConfig(tp_plan="auto")`` and the legacy ``tp_plan="auto"``). Every rank's float32
logits must be within 1e-5 (max abs) of a plain single-process load of the same directory, and greedy
``generate()`` must give the same tokens.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import small_olmo2_config, small_olmo_config
import torch
from transformers import AutoModelForCausalLM

import olmo_hf  # noqa: F401  (registers our classes with the Auto classes)
from olmo_hf import Olmo2ForCausalLM, OlmoForCausalLM

WORKER = Path(__file__).with_name("tp_worker.py")
sys.path.insert(0, str(WORKER.parent))
import tp_worker  # noqa: E402  (for INPUT_IDS / MAX_NEW_TOKENS only; does not initialise anything)

WORLD_SIZE = 2
FP32_ATOL = 1e-5
TIMEOUT_S = 240
APIS = ["distributed_config", "tp_plan"]
MODELS = {
    "olmo2-gqa": (Olmo2ForCausalLM, small_olmo2_config(vocab_size=256)),
    "olmo-clip_qkv": (OlmoForCausalLM, small_olmo_config(vocab_size=256, clip_qkv=0.5)),
}

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def save_tiny(name: str, path: Path) -> Path:
    model_class, config = MODELS[name]
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # norm weights start at 1.0: move them so that a wrongly sharded norm shows up
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    """Checkpoints, single-process references and the results of ONE 2-rank torchrun over all of them."""
    if not _has_torch_run():
        pytest.skip("torch.distributed.run (torchrun) is not available")
    root = tmp_path_factory.mktemp("tp")
    checkpoints = {name: save_tiny(name, root / name) for name in MODELS}
    ids = torch.tensor(tp_worker.INPUT_IDS)
    references = {}
    for name, path in checkpoints.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=tp_worker.MAX_NEW_TOKENS, do_sample=False)
        references[name] = {"logits": logits, "generated": generated}

    out = root / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD_SIZE}",
        str(WORKER), "--out", str(out), *map(str, checkpoints.values()),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = {
        (name, api, rank): torch.load(out / f"{name}-{api}-rank{rank}.pt", weights_only=False)
        for name in MODELS
        for api in APIS
        for rank in range(WORLD_SIZE)
    }
    return references, results


def _has_torch_run() -> bool:
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return False
    return True


CASES = [(name, api, rank) for name in MODELS for api in APIS for rank in range(WORLD_SIZE)]
CASE_IDS = [f"{name}-{api}-rank{rank}" for name, api, rank in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tp_load_builds_our_class_on_a_two_rank_gloo_mesh(case, tp_run):
    _, results = tp_run
    name, _, _ = case
    result = results[case]
    assert result["class"] == f"olmo_hf.modeling.{MODELS[name][0].__name__}"
    assert (result["world_size"], result["backend"]) == (WORLD_SIZE, "gloo")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tp_shards_mlp_weights_across_ranks(case, tp_run):
    _, results = tp_run
    name, _, _ = case
    config = MODELS[name][1]
    shapes = results[case]["local_shapes"]
    assert shapes["gate_proj"] == [config.intermediate_size // WORLD_SIZE, config.hidden_size]  # colwise
    assert shapes["down_proj"] == [config.hidden_size, config.intermediate_size // WORLD_SIZE]  # rowwise
    assert shapes["lm_head"] == [config.vocab_size // WORLD_SIZE, config.hidden_size]  # colwise_gather_output


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tp_shards_attention_projections_by_heads(case, tp_run):
    _, results = tp_run
    name, _, _ = case
    config = MODELS[name][1]
    shapes = results[case]["local_shapes"]
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    assert shapes["q_proj"] == [q_width // WORLD_SIZE, config.hidden_size]
    assert shapes["k_proj"] == [kv_width // WORLD_SIZE, config.hidden_size]
    assert shapes["o_proj"] == [config.hidden_size, q_width // WORLD_SIZE]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tp_logits_match_single_process_within_1e_5(case, tp_run):
    references, results = tp_run
    expected = references[case[0]]["logits"]
    actual = results[case]["logits"]
    assert actual.shape == expected.shape  # full vocabulary on every rank (lm_head output is gathered)
    assert expected.abs().max() > 0.1  # not a comparison between near-zero tensors
    assert (actual - expected).abs().max().item() <= FP32_ATOL


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tp_generate_gives_single_process_greedy_tokens(case, tp_run):
    references, results = tp_run
    expected = references[case[0]]["generated"]
    assert expected.shape[1] == len(tp_worker.INPUT_IDS[0]) + tp_worker.MAX_NEW_TOKENS
    assert torch.equal(results[case]["generated"], expected)
