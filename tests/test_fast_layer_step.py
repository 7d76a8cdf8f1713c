"""olmo_hf.fast: a decoding step of an OLMo 2 / OLMo 3 decoder layer in one native call (kernels.c
``olmo_hf_decode_layer``, forwards.py ``_fused_decode_step``).

The one-call step runs the same kernels in the same order as the per-module forwards, so its outputs are the same
bits; these tests compare the two paths of one optimised model (the per-module path forced by switching the step
off) and check where the step steps aside. No timings here (docs/performance.md).
"""

import pytest
import torch
from torchao.quantization import IntxWeightOnlyConfig, PerGroup
from transformers import AutoModelForCausalLM, TorchAoConfig

import olmo_hf
import olmo_hf.fast.forwards as forwards
from olmo_hf.fast import native, optimize_for_cpu_inference, status

NEW_TOKENS = 8
_STEP = forwards._fused_decode_step  # the real one (the tests below switch it off and on)
# head_dim 32 (the q/k norm + RoPE kernel takes multiples of 32), GQA, 2 layers
SHAPE = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.1, pad_token_id=1, eos_token_id=2, bos_token_id=None)


def _needs_kernels():
    lib = native._native_kernel()
    if lib is None or not lib.full:
        pytest.skip("needs the AVX512-BF16 kernels")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"olmo2": dir, "olmo3": dir}: random bf16 checkpoints of our classes (OLMo 3 with a 6-token window)."""
    root = tmp_path_factory.mktemp("layer_step")
    out = {}
    for family, config in (("olmo2", olmo_hf.Olmo2Config(**SHAPE)),
                           ("olmo3", olmo_hf.Olmo3Config(**SHAPE, sliding_window=6,
                                                         layer_types=["sliding_attention", "full_attention"]))):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape))
        model.to(torch.bfloat16).save_pretrained(root / family)
        out[family] = root / family
    return out


def _load(path, quantization_config=None):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                 quantization_config=quantization_config).eval()
    return optimize_for_cpu_inference(model)


def _generate_both_ways(model, monkeypatch, batch: int = 1, prompt: int = 5):
    """Greedy generation with the one-call step, then with the per-module path; (fused calls, outputs, outputs)."""
    calls = []
    step = _STEP

    def counting(*args):
        out = step(*args)
        calls.append(out is not None)
        return out

    ids = torch.randint(3, 128, (batch, prompt), generator=torch.Generator().manual_seed(batch))
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=1)
    with torch.inference_mode():
        monkeypatch.setattr(forwards, "_fused_decode_step", counting)
        fused = model.generate(ids, **kwargs)
        monkeypatch.setattr(forwards, "_fused_decode_step", lambda *args: None)
        modules = model.generate(ids, **kwargs)
    return sum(calls), fused, modules


def _same(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


@pytest.mark.parametrize("batch", [1, 3])
def test_one_call_step_gives_the_per_module_logits_bit_for_bit(checkpoints, monkeypatch, batch):
    _needs_kernels()
    fused_calls, fused, modules = _generate_both_ways(_load(checkpoints["olmo2"]), monkeypatch, batch)
    assert fused_calls == (NEW_TOKENS - 1) * SHAPE["num_hidden_layers"]  # every decoding step of every layer
    assert _same(fused, modules)


def test_one_call_step_takes_int4_weights_bit_for_bit(checkpoints, monkeypatch):
    _needs_kernels()
    config = TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    fused_calls, fused, modules = _generate_both_ways(_load(checkpoints["olmo2"], config), monkeypatch)
    assert fused_calls == (NEW_TOKENS - 1) * SHAPE["num_hidden_layers"]
    assert _same(fused, modules)


def test_olmo3_full_layers_take_the_one_call_step_and_sliding_layers_their_masked_path(checkpoints, monkeypatch):
    _needs_kernels()
    fused_calls, fused, modules = _generate_both_ways(_load(checkpoints["olmo3"]), monkeypatch, prompt=3)
    # the full-attention layer: every step; the sliding-window layer gets a mask from Transformers at every step
    # (inside the window too), and a masked step is the attention interface's (as in the per-module path)
    assert fused_calls == NEW_TOKENS - 1
    assert _same(fused, modules)


def test_a_hook_on_a_sublayer_sees_every_step(checkpoints, monkeypatch):
    _needs_kernels()
    model = _load(checkpoints["olmo2"])
    seen = []
    model.model.layers[1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    fused_calls, fused, modules = _generate_both_ways(model, monkeypatch)
    assert fused_calls == NEW_TOKENS - 1  # layer 0 only
    assert seen.count(1) == 2 * (NEW_TOKENS - 1)  # each decoding step, in both generations
    assert _same(fused, modules)


@pytest.mark.parametrize("group_size", [32, None], ids=["group-wise", "per-row"])
def test_one_call_step_takes_int8_weights_bit_for_bit(checkpoints, monkeypatch, group_size):
    _needs_kernels()
    config = olmo_hf.quantization_config("int8", device="cpu", group_size=group_size)
    fused_calls, fused, modules = _generate_both_ways(_load(checkpoints["olmo2"], config), monkeypatch)
    assert fused_calls == (NEW_TOKENS - 1) * SHAPE["num_hidden_layers"]
    assert _same(fused, modules)


def test_status_names_the_one_call_step(checkpoints):
    _needs_kernels()
    assert any("one native call per layer" in line for line in status(_load(checkpoints["olmo2"])).enabled)


def test_a_deep_copy_after_decoding_steps_decodes_on_its_own_weights(checkpoints, monkeypatch):
    import copy

    _needs_kernels()
    model = _load(checkpoints["olmo2"])
    _generate_both_ways(model, monkeypatch)  # the original's layers have their step descriptors now
    twin = copy.deepcopy(model)
    del model  # its weights may be freed: the copy must not read them
    fused_calls, fused, modules = _generate_both_ways(twin, monkeypatch)
    assert fused_calls == (NEW_TOKENS - 1) * SHAPE["num_hidden_layers"]
    assert _same(fused, modules)
