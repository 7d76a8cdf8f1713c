"""Integration tests: third-party tools (PEFT, TRL, lm-evaluation-harness, pipeline(), Accelerate, ...) run on our classes
and give what they give on Transformers' built-in classes. A package (this file) so that its conftest and modules do not
shadow tests/conftest.py. Not part of the default `python -m pytest` run (pyproject.toml's `norecursedirs`): run it
with `pip install -e ".[integrations]" && python -m pytest tests/integrations` (docs/integrations.md)."""
