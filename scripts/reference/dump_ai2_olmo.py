"""Build a tiny random ai2-olmo (the original OLMo trainer) model and dump it natively.

Runs inside the ai2-olmo reference venv (see scripts/setup_reference_envs.sh), never in
olmo_hf's own environment. Writes to --out:

    config.yaml          trainer config with a `model:` section (enums as their values) and a
                         `tokenizer:` section, readable by olmo.config.ModelConfig.load(p, key="model")
    model.pt             torch.save(model.state_dict()), keys `transformer.*`
    hf_olmo/             (with --hf-olmo) the legacy hf_olmo layout: config.json with
                         model_type "hf_olmo" + raw ModelConfig fields + architectures/auto_map,
                         and pytorch_model.bin with `model.transformer.*` keys
    reference_io.pt      {"input_ids": (2, 12) int64, "logits": fp32 logits of ai2-olmo's own
                          forward, "versions": {...}, "args": {...}}

With ``--batch FILE.json`` (a JSON list of argument lists) one process writes many dumps.

Weights are made discriminating: init_std ~0.1 and norm weights 1 + 0.2 * N(0, 1)
(shared/reference/checkpoints.md §6). ai2-olmo has no head_dim option (always d_model / n_heads).
"""

import argparse
import enum
import importlib.metadata as md
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variant", choices=["olmo1", "olmo2"], default="olmo1")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None, help="must be d_model // n_heads (ai2-olmo has no head_dim)")
    p.add_argument("--mlp-hidden-size", type=int, default=128, help="fused up+gate rows = 2 * HF intermediate_size")
    p.add_argument("--tied", action="store_true")
    p.add_argument("--clip-qkv", type=float, default=None)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--embedding-size", type=int, default=1024, help="padded embedding rows")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--norm-noise", type=float, default=0.2)
    p.add_argument("--qkv-std", type=float, default=None, help="re-init q/k/v projections with this std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos-token-id", type=int, default=999)
    p.add_argument("--pad-token-id", type=int, default=998)
    p.add_argument("--hf-olmo", action="store_true", help="also write the legacy hf_olmo directory")
    return p.parse_args(argv)


def model_kwargs(a):
    if a.head_dim is not None and a.head_dim != a.d_model // a.n_heads:
        raise SystemExit("ai2-olmo has no head_dim option: head_dim must equal d_model // n_heads")
    kw = dict(
        d_model=a.d_model,
        n_layers=a.n_layers,
        n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads,
        mlp_hidden_size=a.mlp_hidden_size,
        vocab_size=a.vocab_size,
        embedding_size=a.embedding_size,
        max_sequence_length=a.max_seq_len,
        eos_token_id=a.eos_token_id,
        pad_token_id=a.pad_token_id,
        weight_tying=a.tied,
        clip_qkv=a.clip_qkv,
        block_type="sequential",
        activation_type="swiglu",
        rope=True,
        alibi=False,
        include_bias=False,
        flash_attention=False,
        init_device="cpu",
        init_fn="normal",
        init_std=a.init_std,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
    )
    if a.variant == "olmo1":
        kw.update(
            layer_norm_type="default",
            layer_norm_with_affine=False,
            attention_layer_norm=False,
            layer_norm_eps=1e-5,
        )
    else:
        if a.clip_qkv is not None:
            raise SystemExit("OLMo 2 has no clip_qkv")
        kw.update(
            norm_after=True,
            layer_norm_type="rms",
            layer_norm_with_affine=True,
            attention_layer_norm=True,
            attention_layer_norm_with_affine=True,
            layer_norm_eps=1e-6,
            rope_theta=500000,
        )
    return kw


def plain(v):
    """ModelConfig.asdict() values -> YAML/JSON-safe values (enums as their values)."""
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def perturb_norms(model, noise, seed):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # every 1-D parameter here is a norm weight (no biases anywhere)
                p.copy_(1.0 + noise * torch.randn(p.shape, generator=g))


def write_hf_olmo(out: Path, model_cfg: dict, state_dict: dict):
    """The layout of allenai/OLMo-1B, OLMo-7B, ... (hf_olmo/convert_olmo_to_hf.py)."""
    out.mkdir()
    config = dict(model_cfg)
    config.update(
        {
            "model_type": "hf_olmo",
            "architectures": ["OLMoForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_olmo.OLMoConfig",
                "AutoModelForCausalLM": "modeling_olmo.OLMoForCausalLM",
                "AutoTokenizer": ["tokenization_olmo_fast.OLMoTokenizerFast"] * 2,
            },
            "use_cache": True,
            "torch_dtype": "float32",
            "transformers_version": md.version("transformers"),
        }
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    torch.save({f"model.{k}": v for k, v in state_dict.items()}, out / "pytorch_model.bin")


def dump(a):
    from olmo.config import ModelConfig
    from olmo.model import OLMo

    torch.manual_seed(a.seed)
    cfg = ModelConfig.new(**model_kwargs(a))
    model = OLMo(cfg, init_params=True)
    perturb_norms(model, a.norm_noise, a.seed)
    if a.qkv_std is not None:  # larger q/k/v so that clip_qkv actually clips
        with torch.no_grad():
            for block in model.transformer.blocks:
                block.att_proj.weight.normal_(0.0, a.qkv_std)
    model.eval()

    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    model_cfg = plain(cfg.asdict())
    trainer_cfg = {
        "run_name": "olmo_hf-reference",
        "seed": a.seed,
        "model": model_cfg,
        "tokenizer": {"identifier": "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json", "truncate_direction": "right"},
    }
    (a.out / "config.yaml").write_text(yaml.safe_dump(trainer_cfg, sort_keys=False))
    assert ModelConfig.load(a.out / "config.yaml", key="model") == cfg  # round-trips natively
    state_dict = model.state_dict()
    torch.save(state_dict, a.out / "model.pt")
    if a.hf_olmo:
        write_hf_olmo(a.out / "hf_olmo", model_cfg, state_dict)

    g = torch.Generator().manual_seed(a.seed + 2)
    input_ids = torch.randint(0, a.vocab_size, (2, 12), generator=g)
    with torch.no_grad():
        logits = model(input_ids).logits.float()
    versions = {p: md.version(p) for p in ("ai2-olmo", "ai2-olmo-core", "torch", "transformers")}
    torch.save(
        {"input_ids": input_ids, "logits": logits, "versions": versions, "args": vars(a) | {"out": str(a.out)}},
        a.out / "reference_io.pt",
    )
    print(json.dumps({"out": str(a.out), "logits_absmax": logits.abs().max().item(), "versions": versions}))


def main(argv=None):
    """``--batch FILE.json`` runs a JSON list of argument lists in one process (one import, many dumps)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--batch"]:
        for args in json.loads(Path(argv[1]).read_text()):
            dump(parse_args(args))
    else:
        dump(parse_args(argv))


if __name__ == "__main__":
    main()
