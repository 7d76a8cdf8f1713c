"""TRL's SFTTrainer on our classes gives the built-in classes' training losses, on the same weights with the same seed:
plain text, a conversational (chat-template) dataset, a LoRA ``peft_config`` and ``packing=True``.

Also pins how TRL resolves a model given by PATH (or Hub id): it builds the class named in ``config.architectures``
straight from the ``transformers`` module, so that path gets Transformers' built-in class even after
``import olmo_hf`` (docs/integrations.md says to pass a loaded model). If TRL ever goes through the Auto classes
instead, these tests fail and the docs should say so.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from .tiny_models import FAMILIES, FAMILY_NAMES, TEXTS, TRAIN_ATOL, load_pair, tokenizer

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

STEPS = 3
# Trainer logs the mean loss of each step; float32 and a few AdamW steps at a high learning rate.
LOSS_ATOL = TRAIN_ATOL

CHATS = [
    [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    for question, answer in zip(TEXTS[0::2], TEXTS[1::2])
]


def sft_config(out, **overrides):
    return trl.SFTConfig(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
        **{"max_length": 48, **overrides},
    )


def sft_losses(model, dataset, out, *, peft_config=None, **overrides):
    """Train ``model`` for STEPS steps with SFTTrainer; (trainer, the logged loss of every step)."""
    torch.manual_seed(0)  # the LoRA adapter is initialised inside SFTTrainer.__init__, before Trainer seeds
    trainer = trl.SFTTrainer(
        model=model, args=sft_config(out, **overrides), train_dataset=dataset, processing_class=tokenizer(),
        peft_config=peft_config,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS
    trained = dict(trainer.model.named_parameters())
    assert all(not torch.equal(trained[name], p) for name, p in before.items())  # every trainable tensor moved
    return trainer, losses


def compare_with_builtin(family_name, checkpoints, tmp_path, dataset, **kwargs):
    family = FAMILIES[family_name]
    builtin, ours = load_pair(family, checkpoints[family_name])
    ref_trainer, ref_losses = sft_losses(builtin, dataset, tmp_path / "builtin", **kwargs)
    trainer, losses = sft_losses(ours, dataset, tmp_path / "ours", **kwargs)
    assert losses == pytest.approx(ref_losses, abs=LOSS_ATOL)
    return trainer, ref_trainer


def lora_config():
    peft = pytest.importorskip("peft")
    return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_on_plain_text_matches_builtin(family, causal_checkpoints, tmp_path):
    trainer, _ = compare_with_builtin(family, causal_checkpoints, tmp_path, datasets.Dataset.from_dict({"text": TEXTS}))
    assert type(trainer.model) is FAMILIES[family].ours_causal_lm


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_on_chat_dataset_matches_builtin(family, causal_checkpoints, tmp_path):
    dataset = datasets.Dataset.from_dict({"messages": CHATS})
    trainer, _ = compare_with_builtin(family, causal_checkpoints, tmp_path, dataset, max_length=96)
    # The rows were rendered with the checkpoint's chat template (OLMo-2-Instruct style).
    first = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert first.startswith("<|endoftext|><|user|>\n" + TEXTS[0]) and "<|assistant|>\n" + TEXTS[1] in first


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_with_lora_peft_config_matches_builtin(family, causal_checkpoints, tmp_path):
    trainer, ref_trainer = compare_with_builtin(
        family, causal_checkpoints, tmp_path, datasets.Dataset.from_dict({"text": TEXTS}), peft_config=lora_config()
    )
    peft = pytest.importorskip("peft")
    assert isinstance(trainer.model, peft.PeftModel)
    assert type(trainer.model.get_base_model()) is FAMILIES[family].ours_causal_lm
    ours = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    builtin = {k: v for k, v in ref_trainer.model.state_dict().items() if "lora_" in k}
    assert sorted(ours) == sorted(builtin) and len(ours) == 8
    assert max((ours[k] - builtin[k]).abs().max().item() for k in ours) <= TRAIN_ATOL


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_with_packing_matches_builtin(family, causal_checkpoints, tmp_path):
    # max_length 40: two or three of the texts share each packed row; TRL's default "bfd" packing is padding-free,
    # so the model sees position_ids that restart per text and no attention mask.
    trainer, _ = compare_with_builtin(
        family, causal_checkpoints, tmp_path, datasets.Dataset.from_dict({"text": TEXTS * 2}), packing=True, max_length=40
    )
    assert trainer.padding_free
    assert len(trainer.train_dataset) < len(TEXTS * 2)  # rows were packed together


# ------------------------------------------------------------------------ models given by path: pinned behaviour


def test_sft_trainer_given_a_path_builds_the_builtin_class(causal_checkpoints, tmp_path):
    """TRL 1.x: ``getattr(transformers, config.architectures[0])`` (trl/trainer/utils.py, create_model_from_path)."""
    trainer = trl.SFTTrainer(
        model=str(causal_checkpoints["olmo2"]), args=sft_config(tmp_path),
        train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
    )
    assert type(trainer.model) is transformers.Olmo2ForCausalLM  # NOT olmo_hf's, although olmo_hf is imported


def test_sft_trainer_given_a_loaded_model_keeps_our_class(causal_checkpoints, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(causal_checkpoints["olmo2"])
    trainer = trl.SFTTrainer(
        model=model, args=sft_config(tmp_path), train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
        processing_class=tokenizer(),
    )
    assert trainer.model is model and type(model) is FAMILIES["olmo2"].ours_causal_lm


def test_dpo_reference_model_is_built_from_the_path_unless_given(causal_checkpoints, tmp_path):
    """DPOTrainer without ``ref_model`` (and without PEFT) loads the reference model from the policy's
    ``name_or_path`` the same way: the built-in class, even when the policy is ours. Passing ``ref_model`` keeps ours."""
    path = causal_checkpoints["olmo2"]
    dataset = datasets.Dataset.from_dict(
        {"prompt": TEXTS[:2], "chosen": [" Yes.", " No."], "rejected": [" Maybe.", " Never."]}
    )
    args = trl.DPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to="none", use_cpu=True,
        bf16=False, save_strategy="no", disable_tqdm=True,
    )
    implicit = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path), args=args, train_dataset=dataset, processing_class=tokenizer()
    )
    assert type(implicit.model) is FAMILIES["olmo2"].ours_causal_lm
    assert type(implicit.ref_model) is transformers.Olmo2ForCausalLM
    explicit = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path), ref_model=AutoModelForCausalLM.from_pretrained(path),
        args=args, train_dataset=dataset, processing_class=tokenizer(),
    )
    assert type(explicit.ref_model) is FAMILIES["olmo2"].ours_causal_lm
