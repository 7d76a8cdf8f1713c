"""Our classes give the same numbers as Transformers' built-in OLMo / OLMo 2 classes on the same weights.

float32 logits within 1e-5 (max abs diff) for every config variant in ``conftest.VARIANTS`` (tied / untied,
MHA / GQA, clip_qkv, head_dim != hidden / heads, scaled RoPE), in eager and sdpa, with and without a cache,
for single sequences and left-padded batches; greedy generation gives identical tokens with dynamic and
static caches; bf16 stays close (tolerances stated below).
"""

import pytest
import torch
from conftest import VARIANT_IDS, VARIANTS, check_cached_decoding, left_padded_batch
from transformers import AutoModelForCausalLM

import olmo_hf

FP32_ATOL = 1e-5
ATTN = ["eager", "sdpa"]


def load_pair(variant, path, attn="sdpa", dtype=torch.float32):
    ref = variant.builtin_model_class.from_pretrained(path, attn_implementation=attn, dtype=dtype).eval()
    ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=dtype).eval()
    assert type(ours).__module__ == "olmo_hf.modeling"
    return ref, ours


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_single_sequence_logits_match_builtin(variant, attn, builtin_checkpoints):
    ref, ours = load_pair(variant, builtin_checkpoints[variant.name], attn)
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = ref(ids).logits, ours(ids).logits
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero tensors
    assert max_diff(expected, actual) <= FP32_ATOL


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_left_padded_batch_logits_match_builtin(variant, attn, builtin_checkpoints):
    ref, ours = load_pair(variant, builtin_checkpoints[variant.name], attn)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        actual = ours(ids, attention_mask=mask).logits
    assert max_diff(expected, actual, mask) <= FP32_ATOL


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_left_padded_rows_equal_their_unpadded_sequences(variant, attn, builtin_checkpoints):
    _, ours = load_pair(variant, builtin_checkpoints[variant.name], attn)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        batched = ours(ids, attention_mask=mask).logits
        for row in range(ids.shape[0]):
            real = ids[row][mask[row].bool()].unsqueeze(0)
            alone = ours(real).logits[0]
            assert max_diff(batched[row][mask[row].bool()], alone) <= FP32_ATOL


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_cached_decoding_matches_builtin_and_full_forward(variant, attn, builtin_checkpoints):
    ref, ours = load_pair(variant, builtin_checkpoints[variant.name], attn)
    ids, mask = left_padded_batch()
    steps = torch.randint(3, 128, (ids.shape[0], 3), generator=torch.Generator().manual_seed(2))
    cache = check_cached_decoding(ref, ours, ids, mask, steps, FP32_ATOL)
    assert cache.get_seq_length() == ids.shape[1] + steps.shape[1]


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_greedy_generation_tokens_identical_to_builtin_and_to_uncached(variant, cache_implementation, builtin_checkpoints):
    """Four ways to the same tokens: the built-in class with this cache, ours with it, and ours without a cache
    (a release that stopped handing the cache to our layers would still match the built-in if both broke)."""
    ref, ours = load_pair(variant, builtin_checkpoints[variant.name])
    ids, mask = left_padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=1)
    expected = ref.generate(ids, cache_implementation=cache_implementation, **kwargs)
    actual = ours.generate(ids, cache_implementation=cache_implementation, **kwargs)
    uncached = ours.generate(ids, use_cache=False, **kwargs)
    assert actual.shape == (3, ids.shape[1] + 8)
    assert torch.equal(expected, actual)
    assert torch.equal(uncached, actual)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_bfloat16_matches_builtin_and_stays_close_to_float32(variant, builtin_checkpoints):
    """bf16: identical to the built-in bf16 model up to 1e-2 (same op order), and within 5% of the largest
    float32 logit (bf16 keeps 8 mantissa bits; these random weights make logits of order 1-10)."""
    path = builtin_checkpoints[variant.name]
    ref, ours = load_pair(variant, path, dtype=torch.bfloat16)
    ours32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        expected16, actual16 = ref(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
        reference32 = ours32(ids, attention_mask=mask).logits
    assert actual16.dtype == torch.bfloat16
    assert max_diff(expected16, actual16, mask) <= 1e-2
    assert max_diff(actual16, reference32, mask) <= 0.05 * reference32.abs().max().item()


def test_clip_qkv_changes_the_output_of_these_test_weights(builtin_checkpoints):
    """Guards the parity matrix: with clip_qkv=0.3 the clamp is active, so matching proves it is applied."""
    path = builtin_checkpoints["olmo-untied-clip_qkv"]
    clipped = olmo_hf.OlmoForCausalLM.from_pretrained(path).eval()
    unclipped = olmo_hf.OlmoForCausalLM.from_pretrained(path, clip_qkv=None).eval()
    ids = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(clipped(ids).logits, unclipped(ids).logits) > 1e-2
