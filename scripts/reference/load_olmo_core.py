"""Load an olmo_hf ``to_olmo_core`` export INTO OLMo-core and run it.

Runs inside the OLMo-core reference venv (see scripts/setup_reference_envs.sh), never in olmo_hf's own
environment; tests/test_reverse_conversion.py calls it. For each checkpoint directory it

1. builds the model with ``TransformerConfig.from_dict(config["model"]).build(init_device="cpu")``;
2. ``load_state_dict(torch.load("model.pt"), strict=True)``;
3. if ``model_and_optim/`` exists, loads it into a second model with
   ``olmo_core.distributed.checkpoint.load_model_and_optim_state`` and checks both agree bit for bit;
4. runs OLMo-core's forward on the given ids.

usage: load_olmo_core.py --ckpt DIR --ids IDS.pt --out RESULT.pt  (or --batch FILE.json: list of arg lists)

RESULT.pt: {"logits": fp32, "config_roundtrip": bool (as_config_dict() == the written model section),
"n_params": int, "dcp_loaded": bool, "versions": {...}}
"""

import argparse
import importlib.metadata as md
import json
import os
import sys
import warnings
from pathlib import Path

import torch


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--ids", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def build(model_cfg):
    from olmo_core.nn.transformer import TransformerConfig

    cfg = TransformerConfig.from_dict(model_cfg)
    return cfg, cfg.build(init_device="cpu")


def load_dcp(path, model):
    from olmo_core.distributed.checkpoint import load_model_and_optim_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_model_and_optim_state(path, model)
        except (RuntimeError, ValueError):
            import torch.distributed as dist

            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29518")
            if not dist.is_initialized():
                dist.init_process_group("gloo", rank=0, world_size=1)
            load_model_and_optim_state(path, model)


def run(a):
    written = json.loads((a.ckpt / "config.json").read_text())["model"]
    cfg, model = build(written)
    model.load_state_dict(torch.load(a.ckpt / "model.pt", map_location="cpu", weights_only=True), strict=True)
    model.eval()
    dcp_loaded = False
    if (a.ckpt / "model_and_optim" / ".metadata").is_file():
        _, other = build(written)
        load_dcp(a.ckpt / "model_and_optim", other)
        ours, theirs = model.state_dict(), other.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), "DCP != model.pt"
        dcp_loaded = True
    ids = torch.load(a.ids, weights_only=True)
    with torch.no_grad():
        logits = model(ids).float()
    result = {
        "logits": logits,
        "config_roundtrip": json.loads(json.dumps(cfg.as_config_dict())) == written,  # as JSON: int keys -> str
        "n_params": sum(p.numel() for p in model.parameters()),
        "dcp_loaded": dcp_loaded,
        "versions": {p: md.version(p) for p in ("ai2-olmo-core", "torch")},
    }
    torch.save(result, a.out)
    print(json.dumps({"ckpt": str(a.ckpt), "config_roundtrip": result["config_roundtrip"], "dcp_loaded": dcp_loaded}))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--batch"]:
        for args in json.loads(Path(argv[1]).read_text()):
            run(parse_args(args))
    else:
        run(parse_args(argv))


if __name__ == "__main__":
    main()
