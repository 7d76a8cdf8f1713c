# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Train the tiny OLMo 2 checkpoint shipped in ``olmo_hf/demo/`` (the default model of ``olmo-hf run``).

Everything is offline and reproducible from this file:

- corpus: English prose shipped with CPython (PSF licence): the prose paragraphs of the documentation topics
  of ``pydoc_data.topics`` and of the standard library's docstrings (see :func:`load_corpus`; code blocks and
  doctests are dropped), documents separated by ``<|endoftext|>``; its SHA-256
  is recorded in ``training.json`` and depends on the Python version (3.11.7 for the shipped checkpoint);
- tokenizer: a byte-level BPE with a 4096-entry vocabulary trained with ``tokenizers`` on the same corpus
  (``<|endoftext|>`` = 0 is EOS/BOS/document separator, ``<|padding|>`` = 1 is padding, as in OLMo);
- model: ``olmo_hf.Olmo2ForCausalLM`` (hidden 192, 4 layers, tied embeddings), trained with the Transformers
  ``Trainer`` on 256-token blocks for ``--steps`` steps with a fixed ``--seed``;
- outputs: the checkpoint (bf16 safetensors, tokenizer, chat template, generation config), ``training.json``
  (settings, corpus hash, losses) and the loss curve ``docs/demo_model_loss.png``.

Usage (about 4 CPU minutes on one core; longer in wall time on a shared machine)::

    OMP_NUM_THREADS=1 python scripts/train_demo_model.py               # writes olmo_hf/demo/ and the plot
    python scripts/train_demo_model.py --steps 20 --output-dir /tmp/demo --plot /tmp/loss.png   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# OLMo 2 Instruct's template, simplified: no tool calls. Quoted from the tokenizer config of
# allenai/OLMo-2-1124-7B-Instruct (also in fairseq2/models/olmo/tokenizer.py as OLMO_HG_CHAT_TEMPLATE).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"
)

EOS, PAD = "<|endoftext|>", "<|padding|>"


# Parts of the standard library that are not prose-documented library code (tests, IDEs, demos, vendored tools).
_SKIPPED_STDLIB_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo",
                        "tkinter", "ensurepip", "pydoc_data", "__pycache__"}


def prose_paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` that read as English sentences, each re-flowed onto one line.

    Dropped: code and doctest blocks (indented or ``>>>`` lines), grammar productions, headings, lists of
    names: any paragraph under 6 words, not ending in ``.`` or ``:``, or under 85 % letters and spaces.
    """
    kept = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.split("\n")
        if paragraph.lstrip().startswith((">>>", "...")) or any(
            line.startswith(("   ", "\t", ">>>", "...")) for line in lines[1:]
        ):
            continue
        flat = " ".join(line.strip() for line in lines).strip()
        if len(flat.split()) < 6 or not flat.endswith((".", ":")):
            continue
        if sum(c.isalpha() or c == " " for c in flat) / len(flat) < 0.85:
            continue
        kept.append(flat)
    return kept


def load_corpus(min_docstring_chars: int = 200) -> list[str]:
    """English prose shipped with CPython (PSF licence), in a fixed order, one string per document:

    1. the documentation topics of ``pydoc_data.topics`` (the text of ``help("assert")`` and friends);
    2. the docstrings of the standard library's modules, classes and functions (read with ``ast``, nothing is
       imported), at least ``min_docstring_chars`` long, files in sorted path order.

    Each document keeps only its prose paragraphs (:func:`prose_paragraphs`), separated by blank lines.
    """
    import ast
    import sysconfig

    from pydoc_data.topics import topics

    raw = [topics[name] for name in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIPPED_STDLIB_DIRS.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_docstring_chars:
                    raw.append(doc)
    documents = ["\n\n".join(prose_paragraphs(text)) for text in raw]
    return [doc for doc in documents if doc]


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE like OLMo's (no prefix space, byte fallback through the 256-symbol alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


class Blocks:
    """Fixed-length blocks of the token stream (documents joined by EOS); labels are the inputs
    (the model shifts them inside its loss)."""

    def __init__(self, blocks) -> None:
        self.blocks = blocks  # LongTensor (n_blocks, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids}


def make_blocks(texts: list[str], tokenizer, block_size: int, n_eval: int, seed: int):
    """Tokenise, concatenate, cut into blocks and hold out ``n_eval`` random blocks for evaluation."""
    import torch

    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(tokenizer.eos_token_id)  # document separator, as in OLMo's data
    n = len(ids) // block_size
    blocks = torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return len(ids), Blocks(blocks[order[n_eval:]]), Blocks(blocks[order[:n_eval]])


def plot_losses(train: list, heldout: list, path: Path, title: str) -> None:
    """Draw the (step, loss) curves of training and of the held-out blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(*zip(*train), label="train")
    if heldout:
        ax.plot(*zip(*heldout), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_title(summary: dict) -> str:
    return (f"olmo_hf demo model: OLMo 2, {summary['parameters'] / 1e6:.1f} M parameters, "
            f"{summary['settings']['steps']} steps\non CPython's documentation; final held-out loss "
            f"{summary['final_heldout_loss']:.2f}")


def sysconfig_stdlib() -> str:
    import sysconfig

    return sysconfig.get_paths()["stdlib"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=REPO_ROOT / "olmo_hf" / "demo")
    p.add_argument("--plot", type=Path, default=REPO_ROOT / "docs" / "demo_model_loss.png")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--intermediate-size", type=int, default=512)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--plot-only", action="store_true",
                   help="only redraw --plot from OUTPUT_DIR/training.json (no training)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_only:
        summary = json.loads((args.output_dir / "training.json").read_text())
        plot_losses(summary["train_losses"], summary["heldout_losses"], args.plot, plot_title(summary))
        print(f"wrote {args.plot}")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # determinism and no fork warnings

    import torch
    from transformers import GenerationConfig, Trainer, TrainingArguments, set_seed

    import olmo_hf

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0, cpu0 = time.time(), time.process_time()

    texts = load_corpus()
    corpus_sha = hashlib.sha256("\n\n".join(texts).encode()).hexdigest()
    tokenizer = train_tokenizer(texts, args.vocab_size, max_length=args.block_size)
    n_tokens, train_set, eval_set = make_blocks(texts, tokenizer, args.block_size, n_eval=48, seed=args.seed)
    print(f"corpus: {len(texts)} documents, {sum(map(len, texts))} chars, {n_tokens} tokens; "
          f"{len(train_set)} train / {len(eval_set)} held-out blocks of {args.block_size}", flush=True)

    config = olmo_hf.Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=args.block_size,
        rms_norm_eps=1e-6,  # as released OLMo 2 checkpoints
        tie_word_embeddings=True,  # halves the size of a model this small
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,  # OLMo uses no BOS; prompts are not prefixed
        architectures=["Olmo2ForCausalLM"],
    )
    model = olmo_hf.Olmo2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=16,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, args.steps // 20),
            weight_decay=0.1,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            logging_steps=max(1, args.steps // 60),
            logging_first_step=True,
            eval_strategy="steps",
            eval_steps=max(1, args.steps // 6),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=args.seed,
            data_seed=args.seed,
            optim="adamw_torch",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set)
        trainer.train()
        final_eval = trainer.evaluate()["eval_loss"]
        log_history = trainer.state.log_history
    train_minutes, cpu_minutes = (time.time() - t0) / 60, (time.process_time() - cpu0) / 60
    print(f"held-out loss {final_eval:.3f} (perplexity {math.exp(final_eval):.1f}); "
          f"{cpu_minutes:.1f} CPU min, {train_minutes:.1f} min wall", flush=True)

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                  "config.json", "generation_config.json", "special_tokens_map.json"):
        (out / stale).unlink(missing_ok=True)
    model.config.use_cache = True  # the Trainer turns the KV cache off for training; generation wants it
    model.to(torch.bfloat16).save_pretrained(out)  # bf16 halves the file; the CLI runs it in bf16 or fp32
    tokenizer.save_pretrained(out)
    # Sampling defaults that make a model this small read well; `olmo-hf run --no-do-sample` gives greedy.
    GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        repetition_penalty=1.15,
        max_new_tokens=48,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)

    losses = [(e["step"], round(e["loss"], 4)) for e in log_history if "loss" in e]
    summary = {
        "script": "scripts/train_demo_model.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("output_dir", "plot")},
        "corpus": {
            "source": "CPython pydoc_data.topics + standard-library docstrings; PSF License Version 2",
            "stdlib": sysconfig_stdlib(),
            "python": platform.python_version(),
            "documents": len(texts),
            "sha256": corpus_sha,
            "tokens": n_tokens,
        },
        "parameters": n_params,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "final_train_loss": losses[-1][1],
        "final_heldout_loss": round(final_eval, 4),
        "train_losses": losses,
        "heldout_losses": sorted({e["step"]: round(e["eval_loss"], 4)
                                  for e in log_history if "eval_loss" in e}.items()),
        "minutes": round(train_minutes, 1),
        "cpu_minutes": round(cpu_minutes, 1),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_losses(summary["train_losses"], summary["heldout_losses"], args.plot, plot_title(summary))
    shutil.rmtree(out / "runs", ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB) and {args.plot}")


if __name__ == "__main__":
    main()
