"""Dependencies point one way: the core model (configs, modules, models, registration, legacy loading) never
imports the conversion package, the CLI or the fast path."""

import subprocess
import sys

CHECK = """
import sys, torch
import olmo_hf
from olmo_hf import Olmo2Config, Olmo2ForCausalLM
model = Olmo2ForCausalLM(Olmo2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2))
model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2)
print(sorted(m for m in sys.modules if m.startswith(("olmo_hf.convert", "olmo_hf.cli", "olmo_hf.fast"))))
"""


def test_the_core_model_imports_no_conversion_cli_or_fast_path_code():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
