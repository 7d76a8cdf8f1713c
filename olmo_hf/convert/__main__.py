# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""``python -m olmo_hf.convert SRC DST [--format F] [--tokenizer T] [--dtype D] [--overwrite] [--validate]``"""

import argparse
import logging
import sys

from . import FORMATS, ConversionError, convert_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m olmo_hf.convert",
        description="Convert an original OLMo checkpoint (ai2-olmo, OLMo-core, hf_olmo) into a Transformers directory.",
    )
    p.add_argument("src", help="original checkpoint directory")
    p.add_argument("dst", help="output directory (Transformers format)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument("--tokenizer", help="tokenizer.json file or tokenizer directory to save alongside")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's dtype")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--validate", action="store_true", help="reload the output and check it against the weights")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = convert_checkpoint(a.src, a.dst, format=a.format, tokenizer=a.tokenizer, dtype=a.dtype,
                                 overwrite=a.overwrite, validate=a.validate)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
