"""olmo_hf.fast: whatever an optimised model refuses (conversions, state-dict loads, gradients) it refuses as a whole.

After each refusal: FastPathError with a one-sentence message that says to call olmo_hf.fast.undo(model) first;
every parameter and buffer (by name: dtype, device, bit-identical values, requires_grad), every state-dict tensor
and the module tree are exactly as before; the model generates the same tokens; save_pretrained writes the
original weights; undo() gives back the original model exactly. Tiny checkpoints from tests/conftest.py.
"""

import copy

import pytest
import torch
from safetensors.torch import load_file

import olmo_hf
from olmo_hf.fast import FastPathError, PackedLinear, is_optimized, optimize_for_cpu_inference, undo

from conftest import VARIANT_IDS, VARIANTS, left_padded_batch

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn) CPU kernels")

OLMO2 = VARIANTS[VARIANT_IDS.index("olmo2-untied-mha")]  # untied: lm_head is packed too
OLMO1 = VARIANTS[VARIANT_IDS.index("olmo-untied-clip_qkv")]
MODELS = [pytest.param((v, d), id=f"{v.family}-{str(d)[6:]}") for v in (OLMO2, OLMO1)
          for d in (torch.float32, torch.bfloat16)]
TWO_MODELS = [MODELS[0], MODELS[3]]  # OLMo 2 in float32, OLMo in bfloat16
NEW_TOKENS = 4


def our_class(variant):
    return olmo_hf.Olmo2ForCausalLM if variant.family == "olmo2" else olmo_hf.OlmoForCausalLM


def load(variant, path, dtype):
    return our_class(variant).from_pretrained(path, dtype=dtype).eval()


def greedy(model):
    ids, mask = left_padded_batch()
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=1)


def snapshot(model):
    """Everything a refusal must leave alone: parameters and buffers by name (the Parameter object, dtype, device,
    values, requires_grad), the state dict (which holds the packed weights' values), the module tree, the mode."""
    tensors = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tensors["parameter " + name] = (id(p), p.dtype, p.device, p.detach().clone(), p.requires_grad)
    for name, b in model.named_buffers(remove_duplicate=False):
        tensors["buffer " + name] = (None, b.dtype, b.device, b.clone(), b.requires_grad)
    for name, t in model.state_dict().items():
        tensors["state " + name] = (None, t.dtype, t.device, t.clone(), None)
    modules = [(name, id(m), type(m)) for name, m in model.named_modules(remove_duplicate=False)]
    return tensors, modules, model.training


def assert_same(model, before):
    tensors, modules, training = snapshot(model)
    assert modules == before[1]
    assert training == before[2]
    assert tensors.keys() == before[0].keys()
    for key, (pid, dtype, device, value, grad) in before[0].items():
        now = tensors[key]
        assert (now[0], now[1], now[2], now[4]) == (pid, dtype, device, grad), key
        assert torch.equal(now[3], value), key


class Optimised:
    """A model optimised for CPU inference, with what it was and what it did before anything is tried on it."""

    def __init__(self, variant, path, dtype, **options):
        self.dtype = dtype
        self.model = load(variant, path, dtype)
        self.plain = snapshot(self.model)
        self.plain_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        optimize_for_cpu_inference(self.model, **options)
        assert any(isinstance(m, PackedLinear) for m in self.model.modules())
        self.optimised = snapshot(self.model)
        self.tokens = greedy(self.model)

    def assert_intact(self, tmp_path):
        """Exactly the optimised model it was; it still generates, saves the original weights, and undoes."""
        assert is_optimized(self.model)
        assert_same(self.model, self.optimised)
        assert torch.equal(greedy(self.model), self.tokens)
        self.model.save_pretrained(tmp_path)
        saved = load_file(str(tmp_path / "model.safetensors"))
        assert saved.keys() == self.plain_state.keys()
        for key, value in self.plain_state.items():
            assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key
        undo(self.model)
        assert_same(self.model, self.plain)


def assert_refusal(excinfo):
    message = str(excinfo.value)
    assert excinfo.type is FastPathError
    assert message.endswith("call olmo_hf.fast.undo(model) first.")
    assert ". " not in message and "\n" not in message  # one sentence


@pytest.fixture
def optimised(builtin_checkpoints, request):
    variant, dtype = request.param
    return Optimised(variant, builtin_checkpoints[variant.name], dtype)


# ----------------------------------------------------------------------------------------------- conversions
CONVERSIONS = {
    "to-float32": lambda m: m.to(torch.float32),
    "to-float16": lambda m: m.to(torch.float16),
    "half": lambda m: m.half(),
    "float": lambda m: m.float(),
    "double": lambda m: m.double(),
    "bfloat16": lambda m: m.bfloat16(),
    "to-meta": lambda m: m.to("meta"),
    "cuda": lambda m: m.cuda(),  # without CUDA torch raises at the first tensor; refused first either way
    "to_empty": lambda m: m.to_empty(device="cpu"),
}
NO_OP = {torch.float32: {"to-float32", "float"}, torch.bfloat16: {"bfloat16"}}


@pytest.mark.parametrize(
    "optimised, conversion",
    [pytest.param((v, d), name, id=f"{v.family}-{str(d)[6:]}-{name}") for v in (OLMO2, OLMO1)
     for d in (torch.float32, torch.bfloat16) for name in CONVERSIONS if name not in NO_OP[d]],
    indirect=["optimised"],
)
def test_a_refused_conversion_leaves_the_model_exactly_as_it_was(optimised, conversion, tmp_path):
    with pytest.raises(FastPathError) as excinfo:
        CONVERSIONS[conversion](optimised.model)
    assert_refusal(excinfo)
    optimised.assert_intact(tmp_path)


SUBMODULES = {
    "decoder-layer": lambda m: m.model.layers[0],
    "mlp": lambda m: m.model.layers[1].mlp,
    "fused-q_proj": lambda m: m.model.layers[0].self_attn.q_proj,
    "lm_head": lambda m: m.lm_head,
    "embedding": lambda m: m.model.embed_tokens,  # no packed weight: refused all the same (the model stays whole)
    "decoder": lambda m: m.model,  # the embedding comes first: plain nn.Module would have converted it
}


@pytest.mark.parametrize("submodule", SUBMODULES)
@pytest.mark.parametrize("optimised", MODELS, indirect=True)
def test_a_conversion_of_a_submodule_is_refused_as_a_whole(optimised, submodule, tmp_path):
    """Every module of an optimised model refuses what would replace one of its weights, packed or not."""
    module = SUBMODULES[submodule](optimised.model)
    other = torch.float16
    for convert in (lambda: module.to(other), lambda: module.to("meta"), lambda: module.to_empty(device="cpu")):
        with pytest.raises(FastPathError) as excinfo:
            convert()
        assert_refusal(excinfo)
    optimised.assert_intact(tmp_path)


@pytest.mark.parametrize("optimised", MODELS, indirect=True)
def test_no_op_moves_pass_and_change_nothing(optimised, tmp_path):
    model, layer = optimised.model, optimised.model.model.layers[0]
    moves = [lambda: model.to("cpu"), lambda: model.cpu(), lambda: model.to(torch.device("cpu")),
             lambda: model.requires_grad_(False)]
    if optimised.dtype == torch.float32:  # in bf16 these would cast the float32 RoPE buffers (see the next test)
        moves += [lambda: model.to(torch.float32), lambda: model.float(), lambda: model.to("cpu", torch.float32)]
    for move in moves:
        assert move() is model
    assert layer.to("cpu") is layer and layer.to(optimised.dtype) is layer
    optimised.assert_intact(tmp_path)


def test_to_the_own_dtype_of_a_bf16_model_casts_only_the_buffers_a_plain_model_casts(builtin_checkpoints, tmp_path):
    """``.to(torch.bfloat16)`` of a bf16 model keeps every parameter and packed weight; like any nn.Module it casts
    the float32 RoPE buffers, exactly as the plain model does."""
    path = builtin_checkpoints[OLMO2.name]
    plain = load(OLMO2, path, torch.bfloat16)
    optimised = Optimised(OLMO2, path, torch.bfloat16)
    assert optimised.model.to(torch.bfloat16) is optimised.model
    plain.to(torch.bfloat16)
    before = optimised.optimised[0]
    now = snapshot(optimised.model)[0]
    for key, (pid, dtype, device, value, grad) in before.items():
        if key.startswith("buffer "):
            buffer = plain.get_buffer(key.removeprefix("buffer "))
            assert now[key][1] == buffer.dtype == torch.bfloat16 and torch.equal(now[key][3], buffer), key
        else:
            assert now[key][:3] == (pid, dtype, device) and torch.equal(now[key][3], value), key
    assert greedy(optimised.model).shape == optimised.tokens.shape


# ----------------------------------------------------------------------------------------------- load_state_dict
def perturbed(state_dict, skip=()):
    """A copy of ``state_dict`` (minus keys containing any of ``skip``) with every value changed."""
    gen = torch.Generator().manual_seed(1)
    return {k: (v.float() + 0.01 * torch.randn(v.shape, generator=gen)).to(v.dtype)
            for k, v in state_dict.items() if not any(s in k for s in skip)}


FUSED = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


@pytest.mark.parametrize("optimised", MODELS, indirect=True)
def test_load_state_dict_with_a_fused_projection_key_loads_nothing(optimised, tmp_path):
    state = perturbed(optimised.plain_state, skip=FUSED)
    state["model.layers.1.self_attn.k_proj.weight"] = optimised.plain_state["model.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(FastPathError, match="fused projections") as excinfo:
        optimised.model.load_state_dict(state, strict=False)
    assert_refusal(excinfo)
    optimised.assert_intact(tmp_path)


@pytest.mark.parametrize("key", ["model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"])
@pytest.mark.parametrize("optimised", TWO_MODELS, indirect=True)
def test_load_state_dict_with_a_misshaped_tensor_loads_nothing(optimised, key, tmp_path):
    """A plain nn.Module copies every other tensor before it raises; here nothing is copied (a plain weight, a
    packed one, the packed lm_head)."""
    state = perturbed(optimised.plain_state, skip=FUSED)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1, dtype=state[key].dtype)
    with pytest.raises(FastPathError, match="has shape") as excinfo:
        optimised.model.load_state_dict(state, strict=False)
    assert_refusal(excinfo)
    optimised.assert_intact(tmp_path)


@pytest.mark.parametrize("variant", [OLMO2, OLMO1], ids=["olmo2", "olmo"])
def test_strict_load_with_missing_or_unexpected_keys_loads_nothing(builtin_checkpoints, variant, tmp_path):
    """Unfused (fuse=False), so that the model's own keys are all loadable; one key too few, one too many."""
    optimised = Optimised(variant, builtin_checkpoints[variant.name], torch.float32, fuse=False)
    missing = perturbed(optimised.plain_state)
    del missing["model.layers.1.post_attention_layernorm.weight" if variant.family == "olmo2"
                else "model.layers.1.mlp.down_proj.weight"]
    unexpected = {**perturbed(optimised.plain_state), "model.layers.1.mlp.surplus": torch.zeros(3)}
    for state, what in ((missing, "missing key"), (unexpected, "unexpected key")):
        with pytest.raises(FastPathError, match=what) as excinfo:
            optimised.model.load_state_dict(state)
        assert_refusal(excinfo)
    with pytest.raises(FastPathError, match="assign=True") as excinfo:
        optimised.model.load_state_dict(perturbed(optimised.plain_state), assign=True)
    assert_refusal(excinfo)
    optimised.assert_intact(tmp_path)


@pytest.mark.parametrize("variant", [OLMO2, OLMO1], ids=["olmo2", "olmo"])
@pytest.mark.parametrize("fuse", [False, True], ids=["unfused-strict", "fused-partial"])
def test_a_valid_state_dict_loads_as_into_the_plain_model(builtin_checkpoints, variant, fuse):
    """Unfused: the model's own state dict, every value changed, strict. Fused: every key but the fused
    projections', strict=False. Both give what the plain model gives with the same dict, and undo() keeps it."""
    path = builtin_checkpoints[variant.name]
    plain = load(variant, path, torch.float32)
    model = optimize_for_cpu_inference(load(variant, path, torch.float32), fuse=fuse)
    state = perturbed(plain.state_dict(), skip=FUSED if fuse else ())
    plain.load_state_dict(state, strict=not fuse)
    model.load_state_dict(state, strict=not fuse)

    expected = plain.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k in state)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=0)
    assert torch.equal(greedy(model), greedy(plain))
    undo(model)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("optimised", TWO_MODELS, indirect=True)
def test_a_training_step_is_refused_and_changes_nothing(optimised, tmp_path):
    """model.train() passes (a mode, no tensor changes); the forward that would need gradients through a packed
    layer is refused, and an optimizer step afterwards has nothing to apply."""
    model = optimised.model
    model.train()
    assert model.training
    params = list(model.parameters())
    for p in params:  # what a training loop does by hand (requires_grad_ on the model is refused, next test)
        p.requires_grad = True
    optimizer = torch.optim.AdamW(params, lr=1.0, weight_decay=0.5)
    ids, _ = left_padded_batch()
    with pytest.raises(FastPathError) as excinfo:
        model(ids, labels=ids).loss.backward()
    assert "undo(model) first" in str(excinfo.value)  # raised by the packed product itself (_Packed.matmul)
    optimizer.step()
    optimizer.zero_grad()
    for p in params:
        assert p.grad is None
        p.requires_grad = False
    model.eval()
    optimised.assert_intact(tmp_path)


@pytest.mark.parametrize("optimised", TWO_MODELS, indirect=True)
def test_requires_grad_on_a_module_with_packed_layers_is_refused(optimised, tmp_path):
    model = optimised.model
    for module in (model, model.model, model.model.layers[1], model.model.layers[0].mlp, model.lm_head):
        with pytest.raises(FastPathError, match="cannot be trained") as excinfo:
            module.requires_grad_(True)
        assert_refusal(excinfo)
    model.requires_grad_(False)  # what it already is: fine
    optimised.assert_intact(tmp_path)


def test_requires_grad_on_a_module_without_packed_layers_is_harmless(builtin_checkpoints):
    """The final norm holds no packed layer: its flag turns on as in a plain model, the next forward with gradients
    is refused at the packed lm_head, and undo() restores the flag."""
    path = builtin_checkpoints[OLMO2.name]
    optimised = Optimised(OLMO2, path, torch.float32)
    model = optimised.model
    model.model.norm.requires_grad_(True)
    assert model.model.norm.weight.requires_grad
    ids, _ = left_padded_batch()
    with pytest.raises(FastPathError):
        model(ids)
    undo(model)
    assert_same(model, optimised.plain)


def test_refusals_survive_deepcopy_and_undo_removes_them(builtin_checkpoints):
    optimised = Optimised(OLMO1, builtin_checkpoints[OLMO1.name], torch.float32)
    clone = copy.deepcopy(optimised.model)
    with pytest.raises(FastPathError):
        clone.half()
    with pytest.raises(FastPathError):
        optimised.model.model.layers[0].half()  # the clone's guards check the clone, the original's the original
    undo(clone)
    assert not any(name in vars(m) for m in clone.modules() for name in ("_apply", "load_state_dict",
                                                                           "requires_grad_"))
    clone.half()  # a plain model again
    assert {p.dtype for p in clone.parameters()} == {torch.float16}
