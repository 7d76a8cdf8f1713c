"""PEFT LoRA on our classes gives what it gives on the built-in classes, on the same weights: the training losses,
the saved adapter tensors, the logits after reloading the adapter and after ``merge_and_unload()``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from .tiny_models import ATOL, FAMILIES, FAMILY_NAMES, TEXTS, TRAIN_ATOL, load_pair, max_diff, tokenizer

peft = pytest.importorskip("peft")

STEPS = 4


def lora_config():
    # peft has no default target modules for the OLMo model types (docs/training.md): name them.
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def training_batch():
    tok = tokenizer()
    batch = tok(TEXTS[:4], padding=True, return_tensors="pt")  # right-padded
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return dict(batch)


def train_lora(model, batch):
    """Wrap ``model`` with a LoRA adapter (initialised from seed 0) and take STEPS AdamW steps on ``batch``."""
    torch.manual_seed(0)
    model = peft.get_peft_model(model, lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model.eval(), losses


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def lora_run(request, causal_checkpoints, tmp_path_factory):
    """One LoRA run on the built-in class and one on ours (same checkpoint, same adapter init, same batch); each
    adapter saved."""
    family = FAMILIES[request.param]
    path = causal_checkpoints[family.name]
    batch = training_batch()
    out = tmp_path_factory.mktemp(f"lora-{family.name}")
    run = dict(family=family, path=path, batch=batch)
    for impl, base in zip(("builtin", "ours"), load_pair(family, path)):
        model, losses = train_lora(base, batch)
        model.save_pretrained(out / impl)
        run[impl] = dict(model=model, losses=losses, adapter=out / impl, logits=logits(model, batch))
    return run


def test_lora_training_losses_match_builtin(lora_run):
    ours, builtin = lora_run["ours"]["losses"], lora_run["builtin"]["losses"]
    assert ours == pytest.approx(builtin, abs=TRAIN_ATOL)
    assert ours[-1] < ours[0] - 0.05  # it trained


def test_lora_wraps_the_same_modules_as_on_builtin(lora_run):
    def lora_modules(model):
        return sorted(name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer))

    ours = lora_modules(lora_run["ours"]["model"])
    assert ours == lora_modules(lora_run["builtin"]["model"])
    assert len(ours) == 4  # q_proj and v_proj of both layers


def test_saved_adapter_tensors_match_builtin(lora_run):
    ours = load_file(lora_run["ours"]["adapter"] / "adapter_model.safetensors")
    builtin = load_file(lora_run["builtin"]["adapter"] / "adapter_model.safetensors")
    assert sorted(ours) == sorted(builtin)
    assert len(ours) == 8  # lora_A and lora_B of 4 modules
    for key in ours:
        assert max_diff(ours[key], builtin[key]) <= TRAIN_ATOL, key
    assert any(key.endswith("lora_B.weight") and ours[key].abs().max() > 0 for key in ours)  # B started at zero


def test_reloaded_adapter_gives_the_trained_logits(lora_run):
    family, batch = lora_run["family"], lora_run["batch"]
    base = AutoModelForCausalLM.from_pretrained(lora_run["path"], dtype=torch.float32)
    assert type(base) is family.ours_causal_lm
    reloaded = peft.PeftModel.from_pretrained(base, lora_run["ours"]["adapter"]).eval()
    assert max_diff(logits(reloaded, batch), lora_run["ours"]["logits"]) <= 1e-6
    assert max_diff(lora_run["ours"]["logits"], lora_run["builtin"]["logits"]) <= TRAIN_ATOL


def test_adapter_trained_on_ours_loads_on_builtin(lora_run):
    family, batch = lora_run["family"], lora_run["batch"]
    base = family.builtin_causal_lm.from_pretrained(lora_run["path"], dtype=torch.float32)
    reloaded = peft.PeftModel.from_pretrained(base, lora_run["ours"]["adapter"]).eval()
    assert max_diff(logits(reloaded, batch), lora_run["ours"]["logits"]) <= ATOL


def test_merge_and_unload_matches_builtin(lora_run, tmp_path):
    family, batch = lora_run["family"], lora_run["batch"]
    merged = {}
    for impl in ("builtin", "ours"):
        base = AutoModelForCausalLM.from_pretrained(lora_run["path"], dtype=torch.float32) if impl == "ours" else (
            family.builtin_causal_lm.from_pretrained(lora_run["path"], dtype=torch.float32)
        )
        model = peft.PeftModel.from_pretrained(base, lora_run[impl]["adapter"]).merge_and_unload().eval()
        assert max_diff(logits(model, batch), lora_run[impl]["logits"]) <= ATOL  # merged == unmerged adapter
        model.save_pretrained(tmp_path / impl)
        merged[impl] = model
    assert type(merged["ours"]) is family.ours_causal_lm
    assert max_diff(logits(merged["ours"], batch), logits(merged["builtin"], batch)) <= TRAIN_ATOL
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    builtin = load_file(tmp_path / "builtin" / "model.safetensors")
    assert sorted(ours) == sorted(builtin)
    for key in ours:
        assert max_diff(ours[key], builtin[key]) <= TRAIN_ATOL, key
    # The merged checkpoint is a plain one again: the Auto classes load it into our class.
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "ours")) is family.ours_causal_lm


def test_fast_path_asks_to_merge_a_peft_model_first(lora_run):
    from olmo_hf.fast import optimize_for_cpu_inference

    with pytest.raises(ValueError, match=r"carries PEFT adapters; merge them \(merge_and_unload\)"):
        optimize_for_cpu_inference(lora_run["ours"]["model"])
