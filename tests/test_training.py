"""Fine-tuning our OLMo / OLMo 2 classes: Trainer + gradient checkpointing, PEFT LoRA, padding-free packing.

All on tiny random models (2 layers, hidden 64) memorising 16 fixed random sequences, a few steps each.

Tolerances (float32):
- packed (``DataCollatorWithFlattening``: one row, ``position_ids`` restarting per sequence) vs padded batch loss:
  max abs diff <= 1e-5 (measured: 0 to 5e-7);
- LoRA merged model vs unmerged adapter model logits: max abs diff <= 1e-5 (measured: 8e-7 to 1.1e-6).
- Trainer runs with the flattening vs the padding collator: logged losses and final weights within 1e-5
  (measured: 0 to 5e-7).
"""

import copy

import pytest
from conftest import small_olmo2_config, small_olmo_config
import torch
from transformers import (
    AutoModelForCausalLM,
    DataCollatorWithFlattening,
    Trainer,
    TrainingArguments,
)

import olmo_hf  # noqa: F401  (registers our classes with the Auto classes)
from olmo_hf import Olmo2ForCausalLM, OlmoForCausalLM

LOSS_ATOL = 1e-5
LOGITS_ATOL = 1e-5
VOCAB = 128
PAD = 0
FAMILIES = {
    "olmo2": (Olmo2ForCausalLM, small_olmo2_config),
    "olmo": (OlmoForCausalLM, lambda: small_olmo_config(clip_qkv=8.0)),
}
# Transformers 5.23 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (old name deprecated).
CHECKPOINTING = (
    {"activation_checkpointing": True}
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else {"gradient_checkpointing": True}
)
# peft's own default for Llama-like attention (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"]).
LORA_TARGETS = ["q_proj", "v_proj"]


def tiny_model(family: str, seed: int = 0):
    model_class, make_config = FAMILIES[family]
    torch.manual_seed(seed)
    return model_class(make_config())


def random_sequences(n: int, lengths=(16,), seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (lengths[i % len(lengths)],), generator=gen).tolist() for i in range(n)]


class Sequences(torch.utils.data.Dataset):
    def __init__(self, sequences):
        self.sequences = sequences

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        return {"input_ids": self.sequences[i]}


def padded_batch(sequences):
    """Right-padded input_ids / attention_mask / labels (-100 on padding)."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), PAD)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = labels[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def mean_loss(model, sequences) -> float:
    was_training = model.training
    model.eval()
    loss = model(**padded_batch(sequences), use_cache=False).loss.item()
    model.train(was_training)
    return loss


def training_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def padded_collator(features):
    return padded_batch([f["input_ids"] for f in features])


# ----------------------------------------------------------------------------------------------- Trainer + GC
@pytest.fixture(scope="module", params=list(FAMILIES))
def trainer_run(request, tmp_path_factory):
    """One 12-step Trainer run with gradient checkpointing; counts the first layer's MLP calls during training."""
    family = request.param
    model = tiny_model(family)
    data = random_sequences(16)
    before = mean_loss(model, data)
    # Transformers checkpoints a layer's `forward` (not `__call__`), so hooks on the layer itself run once; the
    # hooks of its submodules run again when backward recomputes the layer. (A pre-hook: the recomputation stops
    # early, inside the MLP, once it has every tensor backward needs, so a post-forward hook may never run.)
    calls = []
    hook = model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    args = training_args(tmp_path_factory.mktemp(f"gc-{family}"), **CHECKPOINTING)
    trainer = Trainer(model=model, args=args, train_dataset=Sequences(data), data_collator=padded_collator)
    trainer.train()
    hook.remove()
    return {
        "model": model,
        "before": before,
        "after": mean_loss(model, data),
        "steps": trainer.state.global_step,
        "layer0_mlp_calls": len(calls),
    }


def test_trainer_with_gradient_checkpointing_lowers_loss(trainer_run):
    assert trainer_run["steps"] == 12
    assert trainer_run["after"] < 0.8 * trainer_run["before"], trainer_run


def test_gradient_checkpointing_recomputes_decoder_layers_in_backward(trainer_run):
    model = trainer_run["model"]
    if hasattr(model, "is_activation_checkpointing"):  # transformers >= 5.23
        assert model.is_activation_checkpointing
    else:
        assert model.is_gradient_checkpointing
    # once in the forward pass and once more when backward recomputes the checkpointed layer
    assert trainer_run["layer0_mlp_calls"] == 2 * trainer_run["steps"]


# ----------------------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_flattened_packed_batch_gives_padded_batch_loss(family, attn):
    model = tiny_model(family)
    model.config._attn_implementation = attn
    sequences = random_sequences(3, lengths=(9, 5, 12), seed=1)
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])
    assert packed["input_ids"].shape == (1, 26)
    assert packed["position_ids"][0].tolist() == [*range(9), *range(5), *range(12)]
    with torch.no_grad():
        padded_loss = model(**padded_batch(sequences), use_cache=False).loss
        packed_loss = model(**packed, use_cache=False).loss
    assert abs(packed_loss.item() - padded_loss.item()) <= LOSS_ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_is_not_separated_when_a_cache_is_built(family):
    """Pitfall (Transformers' masking, same in the built-in classes): packed sequences are detected from
    position_ids only when no cache exists. With ``use_cache=True`` (the config default, kept by a custom loop) the
    sequences attend to each other and the loss is wrong; Trainer sets ``use_cache=False``
    (``TrainingArguments.use_cache``). If this test fails, Transformers fixed it and docs/training.md can drop the
    warning."""
    model = tiny_model(family)
    sequences = random_sequences(3, lengths=(9, 5, 12), seed=1)
    packed = DataCollatorWithFlattening()([{"input_ids": s} for s in sequences])
    with torch.no_grad():
        padded_loss = model(**padded_batch(sequences), use_cache=False).loss
        cached_loss = model(**packed, use_cache=True).loss
    assert abs(cached_loss.item() - padded_loss.item()) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_with_flattening_collator_tracks_padded_training(family, tmp_path):
    """4 Trainer steps from the same init on sequences of 4 lengths: the padding-free run logs the padded run's
    losses and ends with the same weights (Trainer sets use_cache=False, so the packing is detected)."""
    sequences = random_sequences(16, lengths=(16, 9, 12, 5))
    initial = tiny_model(family).state_dict()
    losses, weights = {}, {}
    for name, data_collator in [("padded", padded_collator), ("packed", DataCollatorWithFlattening())]:
        model = tiny_model(family)
        args = training_args(tmp_path / name, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3)
        trainer = Trainer(model=model, args=args, train_dataset=Sequences(sequences), data_collator=data_collator)
        trainer.train()
        losses[name] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        weights[name] = model.state_dict()
    assert len(losses["packed"]) == 4
    assert max(abs(a - b) for a, b in zip(losses["padded"], losses["packed"])) <= LOSS_ATOL, losses
    for key, value in weights["padded"].items():
        assert not torch.equal(value, initial[key]), key  # every weight was trained
        assert (weights["packed"][key] - value).abs().max().item() <= LOSS_ATOL, key


# ----------------------------------------------------------------------------------------------- PEFT LoRA
try:
    import peft
except ImportError:  # only the LoRA tests below need it
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="peft is not installed (pip install peft)")


@needs_peft
@pytest.mark.parametrize("family", FAMILIES)
def test_peft_has_no_default_lora_target_modules_for_olmo_types(family):
    """peft (<= 0.21 at least) maps no target modules for model_type "olmo" / "olmo2": ``LoraConfig()`` without
    ``target_modules`` is refused, so ours (like the built-in classes) need explicit targets -- see
    docs/training.md. If this fails, peft gained a default: check it and update the docs."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model = tiny_model(family)
    assert DEFAULTS.get(model.config.model_type) is None
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM"))


@pytest.fixture(scope="module", params=list(FAMILIES))
def lora_run(request, tmp_path_factory):
    """LoRA (q_proj, v_proj) trained 12 steps with Trainer + gradient checkpointing."""
    family = request.param
    base = tiny_model(family)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    data = random_sequences(16)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    before = mean_loss(model, data)
    args = training_args(tmp_path_factory.mktemp(f"lora-{family}"), learning_rate=2e-2, **CHECKPOINTING)
    Trainer(model=model, args=args, train_dataset=Sequences(data), data_collator=padded_collator).train()
    return {"family": family, "model": model, "base_state": base_state, "data": data, "before": before}


@needs_peft
def test_lora_wraps_only_q_and_v_projections_of_every_layer(lora_run):
    model = lora_run["model"]
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    n_layers = model.base_model.model.config.num_hidden_layers
    assert len(wrapped) == 2 * n_layers
    assert all(n.endswith(("self_attn.q_proj", "self_attn.v_proj")) for n in wrapped)


@needs_peft
def test_lora_training_lowers_loss(lora_run):
    after = mean_loss(lora_run["model"], lora_run["data"])
    assert after < 0.9 * lora_run["before"], (lora_run["before"], after)


@needs_peft
def test_lora_training_changes_only_adapter_weights(lora_run):
    model = lora_run["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    base_now = model.get_base_model().state_dict()
    for key, value in lora_run["base_state"].items():
        for target in LORA_TARGETS:  # peft moves a wrapped module's weight to <module>.base_layer
            key = key.replace(f"{target}.weight", f"{target}.base_layer.weight")
        assert torch.equal(base_now[key], value), key
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if ".lora_B." in n)  # B starts at zero


def merged_copy(lora_run):
    """merge_and_unload() on a copy (it modifies the model in place; the fixture is shared)."""
    model = copy.deepcopy(lora_run["model"]).eval()
    ids = torch.tensor(lora_run["data"][:2])
    with torch.no_grad():
        adapter_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            plain_logits = model(input_ids=ids).logits
    return model.merge_and_unload().eval(), ids, adapter_logits, plain_logits


@needs_peft
def test_lora_merge_and_unload_gives_adapter_model_logits(lora_run):
    merged, ids, adapter_logits, plain_logits = merged_copy(lora_run)
    assert type(merged).__module__ == "olmo_hf.modeling"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (plain_logits - adapter_logits).abs().max() > 1e-2  # the trained adapter does change the outputs
    assert (merged_logits - adapter_logits).abs().max().item() <= LOGITS_ATOL


@needs_peft
def test_merged_lora_model_reloads_through_auto_classes(lora_run, tmp_path):
    merged, ids, _, _ = merged_copy(lora_run)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert type(reloaded) is type(merged)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits)
