# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Quantization on CPU: every method loads into our classes, generates, stays close to the fp32 model, and
round-trips through save / reload with identical logits (olmo_hf.quantization, docs/quantization.md).

The test model is tiny (hidden 256, 2 layers) with *structured* weights, so that the thresholds are tight enough
to catch real bugs: every projection weight is ternary (-1/0/+1) times a power of two that varies by output row.
NF4, FP4 and per-row int8 represent such weights exactly, so the remaining error comes from bf16 activations
(0.9 % for the plain bf16 model), double-quantized absmax, int8 activation quantization (bnb-8bit,
int8-dynamic) and, for int4, the symmetric int4 grid. Relative L2 logit error against the fp32 model, measured
(torch 2.13 CPU, bitsandbytes 0.50.2, torchao 0.18.0) -> threshold:

    bf16 0.009 | bnb-4bit (any of nf4/fp4, double quant or not) 0.009-0.010 -> 0.03 | bnb-8bit 0.022 -> 0.05
    int8 0.018 -> 0.03 | int8-dynamic 0.028 -> 0.06 | int4 0.020 -> 0.04
    (int8 / int4 with their int8 lm_head and embedding, whose Gaussian weights int8 does not hold exactly;
    0.010 / 0.013 with quantize_embeddings=False)

The row-varying scales also make absmax transposition visible: bitsandbytes' own save after a CPU forward
gives a rel. error of 1.09 here without double quant, and a 1 % drift with it (the round trips below demand
bit-identical logits). Random-init Gaussian weights give much larger 4-bit errors (0.3-0.45, see the benchmark).
"""


import pytest
import torch
from torch import nn

import olmo_hf
from olmo_hf import Olmo2Config, Olmo2ForCausalLM, OlmoConfig, OlmoForCausalLM
from olmo_hf import quantization as Q

torch.set_num_threads(1)

bnb = pytest.importorskip("bitsandbytes")
ao = pytest.importorskip("torchao.quantization")
from torchao.quantization.granularity import PerRow  # noqa: E402
from transformers import PreTrainedModel, AutoModelForCausalLM, BitsAndBytesConfig, TorchAoConfig  # noqa: E402

VOCAB, SEQ = 512, 24
THRESHOLDS = {"bnb-4bit": 0.03, "bnb-8bit": 0.05, "int8": 0.03, "int8-dynamic": 0.06, "int4": 0.04}

# (method, options, load dtype); every CPU-capable variant the issue lists
CPU_CASES = [
    ("bnb-4bit", {}, torch.bfloat16),  # nf4 + double quant, bf16 compute
    ("bnb-4bit", {"double_quant": False}, torch.bfloat16),
    ("bnb-fp4", {}, torch.bfloat16),
    ("bnb-fp4", {"double_quant": False}, torch.bfloat16),
    ("bnb-4bit", {"compute_dtype": torch.float32}, torch.float32),
    ("bnb-8bit", {}, torch.bfloat16),
    ("int8", {}, torch.bfloat16),  # groups of 32
    ("int8", {"group_size": None}, torch.bfloat16),  # one scale per row
    ("int8-dynamic", {}, torch.bfloat16),
    ("int4", {}, torch.bfloat16),
    ("int4_weight_only", {"group_size": 64}, torch.float32),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def _structure(model: nn.Module, seed: int = 0) -> nn.Module:
    """Ternary projections with per-row power-of-two scales, non-trivial norms, Gaussian embeddings/head."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            out_features, in_features = p.shape
            base = 2.0 ** round(-0.5 * torch.log2(torch.tensor(float(in_features))).item())
            row_scale = 2.0 ** (torch.randint(0, 3, (out_features, 1), generator=g).float() - 1)
            p.copy_(torch.randint(-1, 2, p.shape, generator=g).float() * base * row_scale)
        elif "norm" in name:
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
        elif "embed" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif "lm_head" in name:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model.eval()


def _make_checkpoint(directory, family: str):
    common = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, pad_token_id=1, eos_token_id=0)
    if family == "olmo2":
        model = _structure(Olmo2ForCausalLM(Olmo2Config(**common, rms_norm_eps=1e-6)))
    else:
        model = _structure(OlmoForCausalLM(OlmoConfig(**common, clip_qkv=8.0)))
    model.save_pretrained(directory)
    ids = torch.randint(2, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    return str(directory), ids, ref


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("olmo2_fp32"), "olmo2")


@pytest.fixture(scope="module")
def olmo1(tmp_path_factory):
    return _make_checkpoint(tmp_path_factory.mktemp("olmo1_fp32"), "olmo")


def _load(directory, name, dtype=torch.bfloat16, **options):
    config = Q.quantization_config(name, device="cpu", **options)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, quantization_config=config)


def _canonical(name: str) -> str:
    return Q._resolve(name)[0]


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "name, options, check",
    [
        ("bnb-4bit", {}, lambda c: isinstance(c, BitsAndBytesConfig) and c.load_in_4bit
         and c.bnb_4bit_quant_type == "nf4" and c.bnb_4bit_use_double_quant
         and c.bnb_4bit_compute_dtype == torch.bfloat16),
        ("NF4", {"double_quant": False}, lambda c: c.bnb_4bit_quant_type == "nf4" and not c.bnb_4bit_use_double_quant),
        ("bnb_fp4", {"compute_dtype": "float32"}, lambda c: c.bnb_4bit_quant_type == "fp4"
         and c.bnb_4bit_compute_dtype == torch.float32),
        ("bnb-4bit", {"quant_type": "fp4"}, lambda c: c.bnb_4bit_quant_type == "fp4"),
        ("bnb-8bit", {"threshold": 4.0}, lambda c: c.load_in_8bit and c.llm_int8_threshold == 4.0),
        ("llm_int8", {}, lambda c: c.load_in_8bit),
        ("int8", {}, lambda c: isinstance(c, TorchAoConfig)
         and isinstance(Q.linear_config(c), ao.IntxWeightOnlyConfig) and Q.linear_config(c).weight_dtype == torch.int8
         and Q.linear_config(c).granularity.group_size == 32 and Q.linear_config(c).scale_dtype == torch.float16
         and Q.linear_config(c).mapping_type == ao.MappingType.SYMMETRIC_NO_CLIPPING_ERR),
        ("int8_weight_only", {"group_size": 64},
         lambda c: isinstance(Q.linear_config(c), ao.IntxWeightOnlyConfig)
         and Q.linear_config(c).granularity.group_size == 64),
        ("int8", {"group_size": None}, lambda c: isinstance(Q.linear_config(c), ao.Int8WeightOnlyConfig)
         and isinstance(Q.linear_config(c).granularity, PerRow)),
        ("int8_dynamic_activation_int8_weight", {},
         lambda c: isinstance(c.quant_type, ao.Int8DynamicActivationInt8WeightConfig)),
        ("int8-dynamic", {}, lambda c: isinstance(c.quant_type, ao.Int8DynamicActivationInt8WeightConfig)),
        ("int4", {}, lambda c: isinstance(Q.linear_config(c), ao.IntxWeightOnlyConfig)  # CPU: group 64, asymmetric
         and Q.linear_config(c).weight_dtype == torch.int4 and Q.linear_config(c).granularity.group_size == 64
         and Q.linear_config(c).mapping_type == ao.MappingType.ASYMMETRIC),
        ("int4", {"symmetric": True}, lambda c: Q.linear_config(c).mapping_type == ao.MappingType.SYMMETRIC),
        ("int4_weight_only", {"group_size": 32}, lambda c: Q.linear_config(c).granularity.group_size == 32),
        ("none", {}, lambda c: c is None),
    ],
)
def test_quantization_config_names(name, options, check):
    config = Q.quantization_config(name, device="cpu", **options)
    assert check(config), config
    if config is None:
        return
    bitsandbytes = isinstance(config, BitsAndBytesConfig)
    skipped = config.llm_int8_skip_modules if bitsandbytes else config.modules_to_not_convert
    assert "score" in skipped  # a classifier's head is always kept in full precision
    if _canonical(name) in ("int8", "int4"):  # lm_head and the input embedding quantized too (llama.cpp's choice)
        table = config.quant_type.fqn_to_config
        assert config.include_input_output_embeddings
        for key in (Q._LM_HEAD, Q._INPUT_EMBEDDING):
            if _canonical(name) == "int8":  # as the projections: groups, or one scale per row
                assert table[key] == Q.linear_config(config)
            else:  # int4: int8 per row
                assert isinstance(table[key], ao.Int8WeightOnlyConfig) and isinstance(table[key].granularity, PerRow)
    else:
        assert "lm_head" in skipped


@pytest.mark.parametrize("options", [{"quantize_embeddings": False}, {"modules_to_not_convert": ["lm_head"]},
                                     {"modules_to_not_convert": "embed_tokens"}])
def test_lm_head_and_embedding_can_be_kept_in_full_precision(options):
    config = Q.quantization_config("int8", device="cpu", **options)
    table = config.quant_type.fqn_to_config
    keep_all = options.get("quantize_embeddings") is False
    keep_head = keep_all or "lm_head" in options.get("modules_to_not_convert", "")
    keep_embedding = keep_all or options.get("modules_to_not_convert") == "embed_tokens"
    assert (Q._LM_HEAD in table) is not keep_head
    assert (Q._INPUT_EMBEDDING in table) is not keep_embedding
    assert table[Q._DECODER_LINEARS] == Q.int8_group_config(32)


def test_default_device_is_detected(monkeypatch):
    assert isinstance(Q.linear_config(Q.quantization_config("int4")), ao.IntxWeightOnlyConfig)  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = Q.quantization_config("int4_weight_only", group_size=64)  # now the CUDA (tinygemm) layout
    assert isinstance(config.quant_type, ao.Int4WeightOnlyConfig)
    assert config.quant_type.group_size == 64
    assert config.quant_type.int4_packing_format.value == "tile_packed_to_4d"
    assert isinstance(Q.linear_config(Q.quantization_config("int4", device="cpu")), ao.IntxWeightOnlyConfig)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("int5", {}, r"Unknown quantization method 'int5'.*Did you mean.*Known methods: bnb-4bit, bnb-8bit, int8"),
        ("awq", {}, r"Known methods: bnb-4bit"),
        ("int4", {"device": "cpu", "packing_format": "tile_packed_to_4d"},
         r"CUDA layout with no CPU kernel.*quantization_config\('int4', device='cpu'\).*IntxWeightOnlyConfig"),
        ("int4_weight_only", {"device": "cpu", "packing_format": "plain"}, r"CUDA layout.*IntxWeightOnlyConfig"),
        ("int4", {"device": "cuda"}, r"torch.cuda.is_available\(\) is False; use device='cpu'"),
        ("bnb-4bit", {"device": "mps"}, r"supports device 'cpu' or 'cuda'"),
        ("int4", {"device": "cpu", "group_size": 100}, r"group_size.*\(32, 64, 128, 256\)"),
        ("int8", {"device": "cpu", "bits": 4}, r"Unknown option\(s\) \['bits'\].*accepted: group_size"),
        ("int8", {"device": "cpu", "group_size": 48}, r"`group_size` for 'int8' must be a positive multiple of 32 "
                                                      r"\(default 32\) or None for one scale per row, got 48"),
        ("fp4", {"device": "cpu", "quant_type": "nf4"}, r"fixes quant_type='fp4'; use 'bnb-4bit'"),
        ("bnb-4bit", {"device": "cpu", "quant_type": "int4"}, r"'nf4' or 'fp4'"),
        ("bnb-4bit", {"device": "cpu", "compute_dtype": "int8"}, r"compute_dtype.*bfloat16, float32, float16"),
    ],
)
def test_unsupported_names_and_combinations_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Q.quantization_config(name, **kwargs)


def test_int4_cuda_layout_needing_missing_package_names_the_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = Q.importlib.util.find_spec
    monkeypatch.setattr(Q.importlib.util, "find_spec", lambda n, *a: None if n == "mslk" else real_find_spec(n, *a))
    with pytest.raises(ValueError, match=r"needs the `mslk` package.*packing_format='tile_packed_to_4d'"):
        Q.quantization_config("int4", device="cuda", packing_format="plain")


def test_available_methods():
    assert Q.available_methods("cpu") == ["bnb-4bit", "bnb-8bit", "int8", "int8-dynamic", "int4", "none"]


# ----------------------------------------------------------------------------------------------- models on CPU
@pytest.mark.parametrize("name, options, dtype", CPU_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_quantized_model_runs_is_accurate_and_round_trips(olmo2, tmp_path, name, options, dtype):
    directory, ids, ref = olmo2
    model = _load(directory, name, dtype, **options)
    assert isinstance(model, Olmo2ForCausalLM)
    method = _canonical(name)

    # the right modules are quantized: every attention / MLP projection, never norms; lm_head and the input
    # embedding as int8 per row by int8 and int4, kept in full precision by the others
    proj = model.model.layers[0].mlp.down_proj
    if method.startswith("bnb"):
        assert isinstance(proj, bnb.nn.Linear4bit if method == "bnb-4bit" else bnb.nn.Linear8bitLt)
    else:
        assert type(proj.weight).__module__.startswith("torchao")
    assert type(model.lm_head) is nn.Linear
    if method in ("int8", "int4"):
        grouped = method == "int8" and "group_size" not in options  # int8's default: groups of 32, as projections
        for weight in (model.lm_head.weight, model.model.embed_tokens.weight):
            assert type(weight) is (ao.IntxUnpackedToInt8Tensor if grouped else ao.Int8Tensor)
            assert list(weight.block_size) == [1, 32 if grouped else 256]
    else:
        assert type(model.lm_head.weight) is nn.Parameter
        assert type(model.model.embed_tokens.weight) is nn.Parameter
    for module_name, module in model.named_modules():
        if module_name.endswith("norm"):
            assert type(module) is olmo_hf.modules.Olmo2RMSNorm and type(module.weight) is nn.Parameter
            assert module.weight.dtype.is_floating_point

    with torch.no_grad():
        logits = model(ids).logits
    assert _rel(logits, ref) < THRESHOLDS[method], _rel(logits, ref)

    out = model.generate(ids[:1, :8], max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=1)
    assert out.shape == (1, 13) and bool((out[:, 8:] < VOCAB).all())

    # saved AFTER inference (the bitsandbytes CPU repacking case), reloaded with a plain from_pretrained
    Q.save_quantized(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits), "saving changed the in-memory model"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, Olmo2ForCausalLM)
    assert reloaded.config.quantization_config is not None
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)


@pytest.mark.parametrize("name", ["bnb-4bit", "int8"])
def test_olmo_v1_with_clip_qkv(olmo1, tmp_path, name):
    directory, ids, ref = olmo1
    model = _load(directory, name)
    assert isinstance(model, OlmoForCausalLM)
    with torch.no_grad():
        logits = model(ids).logits
    assert _rel(logits, ref) < THRESHOLDS[name]
    assert model.generate(ids[:1, :8], max_new_tokens=3, do_sample=False, pad_token_id=1).shape[1] >= 9
    Q.save_quantized(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, logits)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_tied_embeddings_stay_tied_and_unquantized_and_round_trip(tmp_path, name):
    """A model whose lm_head shares the embedding's weight (OLMo 1 / small configs): both stay in full precision
    (Transformers cannot reload a quantized tied pair), the projections are quantized, saving round-trips."""
    config = OlmoConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                        num_attention_heads=4, pad_token_id=1, eos_token_id=0, tie_word_embeddings=True)
    _structure(OlmoForCausalLM(config)).save_pretrained(tmp_path / "fp32")
    ids = torch.randint(2, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    model = _load(tmp_path / "fp32", name)
    assert model.lm_head.weight is model.model.embed_tokens.weight and type(model.lm_head.weight) is nn.Parameter
    assert type(model.model.layers[0].self_attn.q_proj.weight).__module__.startswith("torchao")
    assert model.config.quantization_config.include_input_output_embeddings is False
    with torch.no_grad():
        logits = model(ids).logits
    Q.save_quantized(model, tmp_path / "q")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)


def test_int8_lm_head_and_embedding_round_trip_and_can_be_kept(olmo2, tmp_path):
    directory, ids, ref = olmo2
    kept = _load(directory, "int8", quantize_embeddings=False)
    assert type(kept.lm_head.weight) is nn.Parameter and type(kept.model.embed_tokens.weight) is nn.Parameter
    head_only = _load(directory, "int8", modules_to_not_convert=["embed_tokens"])
    assert type(head_only.lm_head.weight) is ao.IntxUnpackedToInt8Tensor
    assert type(head_only.model.embed_tokens.weight) is nn.Parameter
    for model in (kept, head_only):
        with torch.no_grad():
            logits = model(ids).logits
        assert _rel(logits, ref) < THRESHOLDS["int8"]
        model.save_pretrained(tmp_path / "out")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        assert type(reloaded.lm_head.weight) is type(model.lm_head.weight)
        assert type(reloaded.model.embed_tokens.weight) is type(model.model.embed_tokens.weight)
        with torch.no_grad():
            assert torch.equal(reloaded(ids).logits, logits)


def test_extra_modules_to_not_convert(olmo2):
    directory, _, _ = olmo2
    model = _load(directory, "bnb-4bit", modules_to_not_convert="down_proj")  # a str or a list
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert isinstance(model.model.layers[1].mlp.up_proj, bnb.nn.Linear4bit)
    assert type(model.lm_head) is nn.Linear


# ----------------------------------------------------------------------------------------------- saving guards
@pytest.mark.parametrize("options", [{"double_quant": False}, {}], ids=["plain", "double_quant"])
def test_bnb_4bit_state_dict_hook_makes_plain_save_pretrained_exact(olmo2, tmp_path, options):
    """The hook our from_pretrained registers on quantized models: plain save_pretrained after a CPU forward stays
    exact."""
    directory, ids, _ = olmo2
    model = _load(directory, "bnb-4bit", **options)
    with torch.no_grad():
        logits = model(ids).logits
    packed = sum(Q._is_cpu_packed(m) for m in model.modules())
    if bnb.functional.has_avx512bf16():  # the CPU kernel repacks on the first forward only on such CPUs
        assert packed == 14  # 7 projections x 2 layers
    assert model._olmo_hf_bnb_state_dict_hook is not None  # registered by from_pretrained, not by the test
    model.save_pretrained(tmp_path)
    assert not any(Q._is_cpu_packed(m) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, logits)
    assert Q.restore_bnb_cpu_layout(model) == packed  # repacked again by the forward above; restorable again


def test_unquantized_models_carry_no_state_dict_hook(olmo2):
    directory, _, _ = olmo2
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert getattr(model, "_olmo_hf_bnb_state_dict_hook", None) is None
    assert not model._state_dict_pre_hooks


def test_save_refuses_unserializable_quantization(olmo2, tmp_path):
    directory, _, _ = olmo2
    model = AutoModelForCausalLM.from_pretrained(directory)
    Q.check_serializable(model)  # unquantized: fine

    class NotSerializable:  # stands in for quanto / HQQ, which Transformers 5.23 cannot save
        quantization_config = type("Config", (), {"quant_method": "quanto"})()

        def is_serializable(self):
            return False

    model.hf_quantizer = NotSerializable()
    target = tmp_path / "out"
    with pytest.raises(ValueError, match=r"quantized with 'quanto'.*cannot save.*quantize at load time"):
        Q.save_quantized(model, target)
    assert not target.exists()


# ----------------------------------------------------------------------------------------------- CPU int8 kernel
def test_cpu_int8_kernel(olmo2, tmp_path):
    directory, ids, ref = olmo2
    model = _load(directory, "int8", group_size=None)  # torch's fused kernel takes one scale per row
    with torch.no_grad():
        torchao_logits = model(ids).logits
    assert Q.use_cpu_int8_kernel(model) == 16  # 7 projections x 2 layers, lm_head, and the embedding
    with torch.no_grad():
        logits = model(ids).logits
    assert _rel(logits, torchao_logits) < 0.02  # both round to bf16 (the bf16 model is 0.009 from fp32)
    assert _rel(logits, ref) < THRESHOLDS["int8"]
    assert model.generate(ids[:1, :8], max_new_tokens=4, min_new_tokens=4, do_sample=False).shape == (1, 12)
    Q.save_quantized(model, tmp_path)  # weights are untouched torchao tensors: the checkpoint is torchao's
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, torchao_logits)
    assert Q.use_cpu_int8_kernel(_load(directory, "int8-dynamic")) == 0  # only weight-only int8 is switched
    assert Q.use_cpu_int8_kernel(_load(directory, "int8")) == 0  # group-wise: the fast path's kernels only


def test_cpu_int8_kernel_embedding_lookup_equals_torchaos(olmo2):
    directory, ids, _ = olmo2
    model = _load(directory, "int8", group_size=None)
    embedding = model.model.embed_tokens
    with torch.no_grad():
        expected = embedding(ids)  # torchao dequantizes the whole table
        Q.use_cpu_int8_kernel(model)
        assert "forward" in embedding.__dict__
        assert torch.equal(embedding(ids), expected)


def _mapped_resident_bytes(path) -> int:
    """Resident bytes of this process's memory maps of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:  # a mapping's header line
                inside = len(parts) >= 6 and parts[5] == str(path)
            elif inside and parts[0] == "Rss:":
                total += int(parts[1]) * 1024
    return total


@pytest.mark.skipif(not Q.sys.platform.startswith("linux"), reason="reads /proc/self/smaps; madvise is Linux only")
def test_quantized_load_gives_back_the_checkpoint_pages_it_no_longer_reads(olmo2, tmp_path, monkeypatch):
    """The bf16 pages read to quantize stay resident while the norms (views of the map: a bf16 checkpoint loaded
    in bf16) keep the checkpoint's map alive; our from_pretrained releases them (release_checkpoint_pages),
    leaving only the pages under live tensors."""
    directory, ids, ref = olmo2
    AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).save_pretrained(tmp_path)
    file = Q.os.path.realpath(tmp_path / "model.safetensors")
    with monkeypatch.context() as patched:
        patched.setattr(Q, "release_checkpoint_pages", lambda model: 0)
        kept = _load(tmp_path, "int8")
        assert _mapped_resident_bytes(file) > Q.os.path.getsize(file) // 2  # without: the pages read stay
        del kept
    model = _load(tmp_path, "int8")
    live = sum(p.numel() * p.element_size() for p in model.parameters() if type(p) is nn.Parameter)
    assert _mapped_resident_bytes(file) <= live + 2 * 4096 * len(list(model.parameters()))
    assert Q.os.path.getsize(file) > 20 * live  # the projections were most of the file
    with torch.no_grad():
        assert _rel(model(ids).logits, ref) < THRESHOLDS["int8"]


def test_memory_footprint_counts_stored_bytes(olmo2):
    """Our get_memory_footprint() is the bytes really stored: Transformers' own count reports torchao int8
    weights at their logical bf16 size and leaves bitsandbytes' absmax out."""
    directory, _, _ = olmo2
    bf16 = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    assert bf16.get_memory_footprint() == Q.memory_footprint(bf16) == PreTrainedModel.get_memory_footprint(bf16)
    int8 = _load(directory, "int8", group_size=None)
    proj_params = sum(p.numel() for n, p in bf16.named_parameters() if n.endswith("proj.weight"))
    int8_params = proj_params + bf16.lm_head.weight.numel() + bf16.model.embed_tokens.weight.numel()
    assert PreTrainedModel.get_memory_footprint(int8) == bf16.get_memory_footprint()  # Transformers' miscount
    saved = bf16.get_memory_footprint() - int8.get_memory_footprint()
    assert 0.95 * int8_params < saved < int8_params  # one byte saved per projection, lm_head and embedding weight
    # groups of 32 (the default): per 32 weights a float16 scale and torchao's int8 zero point (all zero)
    grouped = bf16.get_memory_footprint() - _load(directory, "int8").get_memory_footprint()
    assert grouped == int8_params - int8_params // 32 * (2 + 1)
    nf4 = _load(directory, "bnb-4bit", double_quant=False)
    absmax_bytes = 4 * proj_params // 64  # one float32 absmax per 64-weight block
    assert nf4.get_memory_footprint() >= PreTrainedModel.get_memory_footprint(nf4) + absmax_bytes


def test_int8_groups_too_small_for_float16_scales_are_refused_not_garbled(tmp_path):
    """torchao 0.18 quantizes with 1 / scale in float16, infinite for groups whose largest magnitude is under ~1.9e-3:
    loading refuses such a checkpoint with the remedy instead of giving +-max for every value of the group."""
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(Olmo2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[3, :32] = torch.linspace(-5e-4, 6e-4, 32)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight has 1 group\(s\) of 32 .*"
                                         r"group_size=None"):
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16,
                                             quantization_config=Q.quantization_config("int8", device="cpu"))
    per_row = AutoModelForCausalLM.from_pretrained(  # "int8-row" = "int8" with group_size=None
        tmp_path, dtype=torch.bfloat16, quantization_config=Q.quantization_config("int8-row", device="cpu"))
    assert type(per_row.model.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"  # torchao's per-row int8
    row = per_row.model.layers[0].mlp.down_proj.weight.dequantize()[3, :32].float()
    assert (row - torch.linspace(-5e-4, 6e-4, 32)).abs().max() < 1e-3  # the values, to per-row int8 precision
