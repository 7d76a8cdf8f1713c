"""Build a tiny random OLMo-core model and dump it in OLMo-core's native on-disk format.

Runs inside the OLMo-core reference venv (see scripts/setup_reference_envs.sh), never in
olmo_hf's own environment. Writes to --out:

    config.json          {"model": TransformerConfig.as_config_dict(),
                          "dataset": {"sequence_length": ..., "tokenizer": {eos/pad/bos ids}}}
    model_and_optim/     torch.distributed.checkpoint dir written by
                         olmo_core.distributed.checkpoint.save_model_and_optim_state
    model.pt             (with --plain-model-pt) a plain torch.save of the model state dict
    reference_io.pt      {"input_ids": (2, --seq-len) int64, "logits": fp32 logits of OLMo-core's own
                          forward, "versions": {...}, "args": {...}}

With ``--batch FILE.json`` (a JSON list of argument lists) one process writes many dumps.

Weights are made discriminating: init_std ~0.1 and norm weights 1 + 0.2 * N(0, 1)
(shared/reference/checkpoints.md §6).
"""

import argparse
import importlib.metadata as md
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variant", choices=["olmo1", "olmo2", "olmo3"], default="olmo2",
                   help="olmo3: olmo2 + sliding windows [W, W, W, -1] (last layer full), as TransformerConfig.olmo3_*")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None, help="default: d_model // n_heads")
    p.add_argument("--ffn-hidden-size", type=int, default=64, help="= HF intermediate_size")
    p.add_argument("--tied", action="store_true")
    p.add_argument("--clip-qkv", type=float, default=None)
    p.add_argument("--vocab-size", type=int, default=1000, help="tokenizer vocab (ids are drawn below it)")
    p.add_argument("--embedding-size", type=int, default=1024, help="padded embedding rows")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--norm-noise", type=float, default=0.2)
    p.add_argument("--qkv-std", type=float, default=None, help="re-init q/k/v projections with this std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos-token-id", type=int, default=999)
    p.add_argument("--pad-token-id", type=int, default=998)
    p.add_argument("--plain-model-pt", action="store_true", help="also write model.pt")
    p.add_argument("--window", type=int, default=8, help="olmo3: sliding window size")
    p.add_argument("--yarn-factor", type=float, default=None,
                   help="olmo3: YaRN on the full-attention layers only (with_rope_scaling(full_attn_layers_only=True))")
    p.add_argument("--yarn-old-context", type=int, default=16, help="olmo3: YaRN old_context_len")
    p.add_argument("--seq-len", type=int, default=12, help="length of the reference input ids")
    return p.parse_args(argv)


def build_config(a):
    from olmo_core.nn.layer_norm import LayerNormConfig, LayerNormType
    from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

    if a.variant in ("olmo2", "olmo3"):
        cfg = TransformerConfig.llama_like(
            d_model=a.d_model,
            vocab_size=a.embedding_size,
            n_layers=a.n_layers,
            n_heads=a.n_heads,
            n_kv_heads=a.n_kv_heads,
            head_dim=a.head_dim,
            block_name=TransformerBlockType.reordered_norm,
            qk_norm=True,
            rope_theta=500_000,
            layer_norm_eps=1e-6,
            init_std=a.init_std,
            tie_word_embeddings=a.tied,
        )
    else:
        # OLMo v1 expressed in OLMo-core: pre-norm block, non-affine LayerNorm (eps 1e-5),
        # no qk-norm, RoPE theta 10000, optional clip_qkv.
        cfg = TransformerConfig.llama_like(
            d_model=a.d_model,
            vocab_size=a.embedding_size,
            n_layers=a.n_layers,
            n_heads=a.n_heads,
            n_kv_heads=a.n_kv_heads,
            head_dim=a.head_dim,
            block_name=TransformerBlockType.default,
            layer_norm_name=LayerNormType.default,
            layer_norm_eps=1e-5,
            rope_theta=10_000,
            init_std=a.init_std,
            tie_word_embeddings=a.tied,
        )
        ln = LayerNormConfig(name=LayerNormType.default, eps=1e-5, elementwise_affine=False, bias=False)
        cfg.block.layer_norm = ln
        cfg.lm_head.layer_norm = ln
        cfg.block.sequence_mixer.clip_qkv = a.clip_qkv
    if a.variant != "olmo1" and a.clip_qkv is not None:
        raise SystemExit("OLMo 2 / 3 have no clip_qkv")
    cfg.block.feed_forward.hidden_size = a.ffn_hidden_size
    if a.variant == "olmo3":  # TransformerConfig.olmo3_* (nn/transformer/config.py): pattern [W, W, W, -1]
        from olmo_core.nn.attention import SlidingWindowAttentionConfig

        cfg.block.sequence_mixer.sliding_window = SlidingWindowAttentionConfig(
            pattern=[a.window, a.window, a.window, -1],
            force_full_attention_on_first_layer=False,
            force_full_attention_on_last_layer=True,
        )
        if a.yarn_factor is not None:  # as OLMo-3-1025-7B-long-context.py, scaled down
            from olmo_core.nn.rope import YaRNRoPEScalingConfig

            cfg = cfg.with_rope_scaling(YaRNRoPEScalingConfig(
                factor=a.yarn_factor, beta_fast=32, beta_slow=1, old_context_len=a.yarn_old_context,
            ), full_attn_layers_only=True)
    cfg.init_seed = a.seed
    return cfg


def perturb_norms(model, noise, seed):
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # every 1-D parameter here is a norm weight (no biases anywhere)
                p.copy_(1.0 + noise * torch.randn(p.shape, generator=g))


def dump(a):
    torch.manual_seed(a.seed)
    cfg = build_config(a)
    model = cfg.build(init_device="cpu")
    model.init_weights(max_seq_len=a.max_seq_len, device=torch.device("cpu"))
    perturb_norms(model, a.norm_noise, a.seed)
    if a.qkv_std is not None:  # larger q/k/v so that clip_qkv actually clips
        with torch.no_grad():
            for block in model.blocks.values():
                for w in (block.attention.w_q, block.attention.w_k, block.attention.w_v):
                    w.weight.normal_(0.0, a.qkv_std)
    model.eval()

    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    config = {
        "model": cfg.as_config_dict(),
        # The subset of an OLMo-core experiment config that carries the special token ids.
        "dataset": {
            "sequence_length": a.max_seq_len,
            "tokenizer": {
                "vocab_size": a.vocab_size,
                "eos_token_id": a.eos_token_id,
                "pad_token_id": a.pad_token_id,
                "bos_token_id": None,
                "identifier": None,
            }
        },
    }
    (a.out / "config.json").write_text(json.dumps(config, indent=2))

    from olmo_core.distributed.checkpoint import save_model_and_optim_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        try:
            save_model_and_optim_state(a.out / "model_and_optim", model)
        except (RuntimeError, ValueError):
            # Some torch builds insist on a process group; a 1-rank gloo group is enough.
            import torch.distributed as dist

            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29517")
            dist.init_process_group("gloo", rank=0, world_size=1)
            save_model_and_optim_state(a.out / "model_and_optim", model, save_overwrite=True)
    if a.plain_model_pt:
        torch.save(model.state_dict(), a.out / "model.pt")

    g = torch.Generator().manual_seed(a.seed + 2)
    input_ids = torch.randint(0, a.vocab_size, (2, a.seq_len), generator=g)
    with torch.no_grad():
        logits = model(input_ids).float()
    versions = {p: md.version(p) for p in ("ai2-olmo-core", "torch", "transformers")}
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
