"""olmo_hf.convert.to_olmo_core: Transformers Olmo / Olmo2 -> an OLMo-core checkpoint (to continue training).

The parity tests load the export INTO OLMo-core itself: scripts/reference/load_olmo_core.py runs in the
OLMo-core reference venv (scripts/setup_reference_envs.sh; python from OLMO_HF_OLMO_CORE_PYTHON, else
<repo>/.venvs/olmo-core/bin/python), builds ``TransformerConfig.from_dict(config["model"])``, loads model.pt
with ``strict=True`` (and model_and_optim/ with ``load_model_and_optim_state``) and runs the same ids as ours:
max |logit diff| <= 1e-5. Those are skipped, with the reason, when the venv is absent; the round-trip tests
(HF -> OLMo-core -> our own converter -> HF, bit-identical) need no venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import math

from olmo_hf import Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM, OlmoConfig, OlmoForCausalLM
from olmo_hf.convert import ConversionError, convert_checkpoint, to_olmo_core
from olmo_hf.layouts import OLMO_CORE_LAYOUT, inverse_layout

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
CORE_ENV = "OLMO_HF_OLMO_CORE_PYTHON"

BASE = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            initializer_range=0.1, eos_token_id=255, pad_token_id=254, bos_token_id=None, max_position_embeddings=128)
OLMO2 = dict(BASE, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})

# name: (config class, model class, config kwargs, q/k/v std or None, write model_and_optim/)
CASES = {
    "olmo2-gqa": (Olmo2Config, Olmo2ForCausalLM, dict(OLMO2, num_key_value_heads=2), None, True),
    "olmo2-tied": (Olmo2Config, Olmo2ForCausalLM, dict(OLMO2, tie_word_embeddings=True), None, False),
    # OLMo-core's olmo2_1M shape: head_dim 4 on hidden 12 with 4 heads (head_dim != hidden / heads)
    "olmo2-head_dim": (Olmo2Config, Olmo2ForCausalLM, dict(OLMO2, hidden_size=12, head_dim=4, num_key_value_heads=2),
                       None, False),
    # OLMo v1 in OLMo-core: pre-norm 'default' block, non-affine LayerNorm; q/k/v std 0.6 so clip_qkv clips
    "olmo1-clip-tied": (OlmoConfig, OlmoForCausalLM, dict(BASE, clip_qkv=8.0, tie_word_embeddings=True), 0.6, True),
    # OLMo 3: layers 0-2 window 4 (the 12 test ids run past it), layer 3 full with the released YaRN block, scaled
    # down to 8 original positions
    "olmo3-swa-yarn": (Olmo3Config, Olmo3ForCausalLM, dict(
        OLMO2, num_hidden_layers=4, num_key_value_heads=2, sliding_window=4, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0},
            "full_attention": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                               "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 0.1 * math.log(4.0) + 1,
                               "rope_theta": 500000.0}}), None, True),
}


def build(name: str, seed: int = 0):
    config_cls, model_cls, kwargs, qkv_std, _ = CASES[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:  # norm weights: away from 1 so that a misplaced norm shows
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif qkv_std is not None and any(f"self_attn.{x}_proj" in pname for x in "qkv"):
                p.normal_(0.0, qkv_std, generator=g)
    return model


def input_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("to_olmo_core")
    out = {}
    for i, name in enumerate(CASES):
        model = build(name, seed=i)
        out[name] = (to_olmo_core(model, root / name, model_and_optim=CASES[name][4]), model)
    return out


@pytest.fixture(scope="session")
def olmo_core_results(exports, tmp_path_factory) -> dict[str, dict] | str:
    """name -> load_olmo_core.py's result (OLMo-core's logits etc.), or the reason the venv is unavailable."""
    python = Path(os.environ.get(CORE_ENV) or REPO / ".venvs" / "olmo-core" / "bin" / "python")
    if not python.is_file():
        return f"no olmo-core reference venv at {python}: run scripts/setup_reference_envs.sh or set {CORE_ENV}"
    root = tmp_path_factory.mktemp("olmo_core_results")
    batch = []
    for name, (path, model) in exports.items():
        torch.save(input_ids(model.config.vocab_size), root / f"{name}.ids.pt")
        batch.append(["--ckpt", str(path), "--ids", str(root / f"{name}.ids.pt"), "--out", str(root / f"{name}.pt")])
    (root / "batch.json").write_text(json.dumps(batch))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(python), str(REPO / "scripts/reference/load_olmo_core.py"), "--batch",
                           str(root / "batch.json")], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, f"OLMo-core could not load the exports:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return {name: torch.load(root / f"{name}.pt", weights_only=True) for name in exports}


# --- loading the export into OLMo-core --------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(CASES))
def test_olmo_core_loads_the_export_strictly_and_matches_our_logits(name, attn_implementation, exports,
                                                                    olmo_core_results, record_property):
    if isinstance(olmo_core_results, str):
        pytest.skip(olmo_core_results)
    _, model = exports[name]
    result = olmo_core_results[name]
    assert result["versions"]["ai2-olmo-core"] == "3.0.0"
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        ours = model(input_ids(model.config.vocab_size)).logits
    theirs = result["logits"]
    assert ours.shape == theirs.shape == (2, 12, model.config.vocab_size)
    assert theirs.abs().max() > 0.5 and theirs.std() > 0.1  # real, varied logits: the comparison is not vacuous
    diff = (ours - theirs).abs().max().item()
    record_property("max_abs_diff", diff)
    print(f"\n{name} [{attn_implementation}]: OLMo-core vs olmo_hf max|diff| = {diff:.3g} "
          f"(max|logit| {theirs.abs().max().item():.3g})")
    assert diff <= TOL
    # TransformerConfig.from_dict(ours).as_config_dict() gives back exactly what we wrote: nothing dropped
    assert result["config_roundtrip"]
    assert result["n_params"] == sum(p.numel() for p in model.parameters())
    assert result["dcp_loaded"] == CASES[name][4]  # model_and_optim/ loaded by load_model_and_optim_state


def test_clip_qkv_case_actually_clips(exports):
    _, model = exports["olmo1-clip-tied"]
    ids = input_ids(model.config.vocab_size)
    with torch.no_grad():
        clipped = model(ids).logits
        model.config.clip_qkv = None
        try:
            unclipped = model(ids).logits
        finally:
            model.config.clip_qkv = 8.0
    assert (clipped - unclipped).abs().max() > 1e-3


# --- round trip, no venv needed -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_through_olmo_core_is_bit_identical(name, exports, tmp_path):
    path, model = exports[name]
    back = convert_checkpoint(path, tmp_path / "hf", validate=True)  # reads model_and_optim/ when written
    cls = type(model)
    reloaded = cls.from_pretrained(back, dtype=torch.float32)
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    a, b = model.config.to_dict(), json.loads((back / "config.json").read_text())
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings", "rope_parameters",
                "eos_token_id", "pad_token_id", "bos_token_id", "max_position_embeddings", "rms_norm_eps", "clip_qkv",
                "sliding_window", "layer_types"):
        assert a.get(key) == b.get(key), key


def test_plain_model_pt_is_read_back_too(exports, tmp_path):
    """With model_and_optim/ the forward converter prefers it; without, it reads model.pt."""
    path, model = exports["olmo2-gqa"]
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("config.json", "model.pt"):
        (plain / f).write_bytes((path / f).read_bytes())
    reloaded = Olmo2ForCausalLM.from_pretrained(convert_checkpoint(plain, tmp_path / "hf"), dtype=torch.float32)
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_export_layout(exports):
    path, model = exports["olmo2-gqa"]
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.pt", "model_and_optim"]
    sd = torch.load(path / "model.pt", weights_only=True)
    expected = {"embeddings.weight", "lm_head.norm.weight", "lm_head.w_out.weight"} | {
        f"blocks.{i}.{k}.weight" for i in range(2) for k in (
            "attention.w_q", "attention.w_k", "attention.w_v", "attention.w_out", "attention.q_norm",
            "attention.k_norm", "attention_norm", "feed_forward_norm", "feed_forward.w1", "feed_forward.w3",
            "feed_forward.w2")}
    assert set(sd) == expected
    assert tuple(sd["blocks.0.attention.w_k.weight"].shape) == (16, 32)  # 2 kv heads of 8
    config = json.loads((path / "config.json").read_text())
    model_cfg = config["model"]
    assert model_cfg["_CLASS_"] == "olmo_core.nn.transformer.config.TransformerConfig"
    assert model_cfg["block"]["name"] == "reordered_norm"
    assert model_cfg["block"]["sequence_mixer"]["n_kv_heads"] == 2
    assert config["dataset"]["tokenizer"]["eos_token_id"] == 255 and config["dataset"]["sequence_length"] == 128


def test_tied_export_stores_the_embedding_under_both_olmo_core_names(exports):
    path, _ = exports["olmo2-tied"]
    sd = torch.load(path / "model.pt", weights_only=True)
    assert torch.equal(sd["embeddings.weight"], sd["lm_head.w_out.weight"])
    assert json.loads((path / "config.json").read_text())["model"]["tie_word_embeddings"] is True


def test_olmo1_export_is_a_pre_norm_block_without_norm_weights(exports):
    path, _ = exports["olmo1-clip-tied"]
    block = json.loads((path / "config.json").read_text())["model"]["block"]
    assert block["name"] == "default" and block["sequence_mixer"]["clip_qkv"] == 8.0
    assert block["layer_norm"] == {"name": "default", "eps": 1e-5, "elementwise_affine": False, "bias": False,
                                   "_CLASS_": "olmo_core.nn.layer_norm.LayerNormConfig"}
    assert not [k for k in torch.load(path / "model.pt", weights_only=True) if "norm" in k]


def test_export_from_a_transformers_directory_equals_export_from_the_model(exports, tmp_path):
    _, model = exports["olmo2-gqa"]
    model.save_pretrained(tmp_path / "hf")
    out = to_olmo_core(tmp_path / "hf", tmp_path / "core")
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(exports["olmo2-gqa"][0] / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reference = exports["olmo2-gqa"][0] / "config.json"
    assert json.loads((out / "config.json").read_text()) == json.loads(reference.read_text())


def test_dtype_casts_the_saved_tensors(tmp_path):
    out = to_olmo_core(build("olmo2-gqa"), tmp_path / "core", dtype="bfloat16")
    assert {v.dtype for v in torch.load(out / "model.pt", weights_only=True).values()} == {torch.bfloat16}


def test_validate_without_olmo_core_checks_the_read_back_and_says_what_it_skipped(tmp_path, caplog):
    import importlib.util

    if importlib.util.find_spec("olmo_core") is not None:
        pytest.skip("olmo_core is importable here; the skip message is not emitted")
    with caplog.at_level("INFO", logger="olmo_hf.convert"):
        to_olmo_core(build("olmo2-gqa"), tmp_path / "core", validate=True)
    assert "model.pt reads back to the model's weights bit for bit" in caplog.text
    assert "comparison with OLMo-core was skipped: ai2-olmo-core (olmo_core) is not importable" in caplog.text


# --- the key table ----------------------------------------------------------------------------------------


def test_inverse_table_is_derived_row_for_row_from_the_forward_table():
    inverse = inverse_layout("olmo_core")
    assert len(inverse) == len(OLMO_CORE_LAYOUT)
    for (fwd_src, (fwd_dst,), _), (inv_src, (inv_dst,), _) in zip(OLMO_CORE_LAYOUT, inverse):
        # the inverse's source regex matches the forward target for layer 3, and maps it to the forward source
        hf_key = fwd_dst.format(L=3) if "{L}" in fwd_dst else fwd_dst
        m = re.fullmatch(inv_src, hf_key)
        assert m is not None
        original = inv_dst.format(L=m.group(1)) if "{L}" in inv_dst else inv_dst
        assert re.fullmatch(fwd_src, original)


def test_ai2_olmo_layout_has_no_inverse():
    with pytest.raises(ConversionError, match="fuses weights"):
        inverse_layout("olmo_trainer")


# --- refusals and atomic writes ----------------------------------------------------------------------------


def test_non_empty_dst_is_refused_and_left_untouched(tmp_path):
    dst = tmp_path / "core"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty; pass overwrite=True"):
        to_olmo_core(build("olmo2-gqa"), dst)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["core"]  # no temporary directory left behind


def test_overwrite_replaces_dst(tmp_path):
    dst = tmp_path / "core"
    dst.mkdir()
    (dst / "model.pt").write_bytes(b"an earlier conversion")
    to_olmo_core(build("olmo2-gqa"), dst, overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["core"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_bias=True), "attention_bias is not supported"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}),
         "RoPE type 'linear' .* is not supported"),
    ],
    ids=["attention_bias", "gelu", "rope_scaling"],
)
def test_what_olmo_core_conversion_cannot_express_is_refused(overrides, message, tmp_path):
    model = Olmo2ForCausalLM(Olmo2Config(**{**OLMO2, **overrides}))
    with pytest.raises(ConversionError, match=message):
        to_olmo_core(model, tmp_path / "core")
    assert not (tmp_path / "core").exists()


def test_source_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        to_olmo_core(tmp_path / "nope", tmp_path / "core")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConversionError, match="neither an OLMo-core config"):
        to_olmo_core(tmp_path / "other", tmp_path / "core")


def test_olmo3_export_has_olmo_core_windows_and_yarn_on_full_layers_only(exports):
    path, _ = exports["olmo3-swa-yarn"]
    model_cfg = json.loads((path / "config.json").read_text())["model"]
    swa = model_cfg["block"]["sequence_mixer"]["sliding_window"]
    assert swa["pattern"] == [4, 4, 4, -1]
    assert "scaling" not in model_cfg["block"]["sequence_mixer"]["rope"]
    assert list(model_cfg["block_overrides"]) == ["3"]
    scaling = model_cfg["block_overrides"]["3"]["sequence_mixer"]["rope"]["scaling"]
    assert (scaling["factor"], scaling["old_context_len"], scaling["_CLASS_"]) == (4, 8, "olmo_core.nn.rope.YaRNRoPEScalingConfig")
