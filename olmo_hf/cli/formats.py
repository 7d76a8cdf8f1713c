# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Reading inputs and writing outputs for ``olmo-hf run``, in the formats of Transformers 4.x ``run``.

``--format`` names the INPUT format, and the output uses the same one (as in 4.x):

- ``json``: ``--input`` holds a JSON list, of strings or of objects whose ``--column`` field is the input;
  the outputs are written as one JSON list (``json.dump``), one object per input.
- ``csv``: ``--input`` is read with ``csv.DictReader`` and ``--column`` names the column; the outputs are a
  CSV with the task's header (``generated_text``, or ``label,score``).
- ``pipe``: every line of stdin (or of ``--input``) is one input, with its trailing newline REMOVED (4.x kept
  it); blank lines are skipped. Each output is printed as soon as it is ready, as one JSON object per line.
  With a multi-column ``--column a,b``, lines are split on tabs into the task's inputs (as in 4.x).

``--column`` is ``name`` or, for tasks that take several inputs, ``a,b`` or ``key=name,key=name`` where the
keys are the pipeline's (``text``, ``text_pair``) and the names are fields of the input file.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

from .errors import CliError, io_fault, is_io_fault, warn
from .output_file import AtomicOutput, rescue
from .tasks import Task

__all__ = [
    "FORMATS",
    "Columns",
    "Input",
    "parse_columns",
    "resolve_format",
    "check_combination",
    "read_batch",
    "iter_pipe",
    "tolerant_text",
    "undecodable_lines",
    "open_writer",
]

FORMATS = ("json", "csv", "pipe")
Input = Union[str, dict[str, str]]  # one pipeline input: a text, or named texts (text / text_pair)


@dataclass(frozen=True)
class Columns:
    """A parsed ``--column``: (pipeline key, field name in the input) pairs."""

    pairs: tuple[tuple[str, str], ...]

    @property
    def multi(self) -> bool:
        return len(self.pairs) > 1

    def names(self) -> list[str]:
        return [name for _, name in self.pairs]


def parse_columns(spec: str | None, task: Task) -> Columns | None:
    """Parse ``--column`` (``name``, ``a,b`` or ``key=a,key=b``) for ``task``."""
    if spec is None:
        return None
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise CliError(f"--column {spec!r} has an empty column name; use e.g. --column text or --column a,b")
    if len(items) == 1 and "=" not in items[0]:
        return Columns(((items[0], items[0]),))
    if len(items) > len(task.input_keys):
        raise CliError(
            f"--column {spec!r} names {len(items)} columns but {task.name} takes "
            f"{len(task.input_keys)} input{'s' if len(task.input_keys) > 1 else ''} "
            f"({', '.join(task.input_keys)}); name a single column"
        )
    pairs = []
    for position, item in enumerate(items):
        key, sep, name = item.partition("=")
        key, name = (key.strip(), name.strip()) if sep else (task.input_keys[position], item)
        if key not in task.input_keys:
            raise CliError(
                f"--column {spec!r}: {key!r} is not an input of {task.name}; use {', '.join(task.input_keys)}"
            )
        pairs.append((key, name))
    if len({key for key, _ in pairs}) != len(pairs):
        raise CliError(f"--column {spec!r} maps two columns to the same input")
    return Columns(tuple(pairs))


def resolve_format(fmt: str, input_path: str | None) -> str:
    """``infer`` -> the format named by ``--input``'s extension, or ``pipe`` without ``--input``."""
    if fmt != "infer":
        return fmt
    if input_path is None:
        return "pipe"
    suffix = Path(input_path).suffix.lower().lstrip(".")
    if suffix in ("json", "csv"):
        return suffix
    raise CliError(
        f"cannot infer the format of --input {input_path} from its extension; "
        "pass --format json, --format csv, or --format pipe (one input per line)"
    )


def check_combination(fmt: str, input_path: str | None, columns: Columns | None, task: Task) -> None:
    """Reject flag combinations that cannot mean anything, before any model is loaded."""
    if fmt in ("json", "csv") and input_path is None:
        raise CliError(f"--format {fmt} reads a file: pass --input FILE.{fmt} (stdin is read with --format pipe)")
    if fmt == "pipe" and columns is not None and not columns.multi:
        pairs = ", or give two columns (--column a,b) to split tab-separated lines" if len(task.input_keys) > 1 else ""
        raise CliError(
            "--column selects a field of JSON or CSV input; with --format pipe each line is one input. "
            f"Drop --column{pairs}"
        )
    if input_path is not None and not Path(input_path).is_file():
        raise CliError(f"--input {input_path} does not exist or is not a file")


def _value(record: dict, name: str, where: str) -> str:
    if name not in record:
        raise CliError(f"{where} has no column {name!r}; its columns are: {', '.join(map(str, record)) or '(none)'}")
    value = record[name]
    if not isinstance(value, str):
        raise CliError(f"{where}, column {name!r}: expected a string, got {json.dumps(value)}")
    return value


def _from_record(record: dict, columns: Columns, where: str) -> Input:
    if columns.multi:
        return {key: _value(record, name, where) for key, name in columns.pairs}
    return _value(record, columns.pairs[0][1], where)


def read_batch(fmt: str, path: str, columns: Columns | None) -> list[Input]:
    """All inputs of a ``json`` or ``csv`` file, validated (UTF-8, no empty input, every column present)."""
    try:
        inputs = _read_json(path, columns) if fmt == "json" else _read_csv(path, columns)
    except UnicodeDecodeError as e:
        raise CliError(f"--input {path} is not valid UTF-8 ({_where_undecodable(path)}); convert it to UTF-8 "
                       "(e.g. iconv -f latin1 -t utf-8)") from e

    if not inputs:
        container = "JSON list" if fmt == "json" else "CSV table"
        raise CliError(f"--input {path} holds no inputs (an empty {container})")
    for index, item in enumerate(inputs):
        texts = item.values() if isinstance(item, dict) else [item]
        if not all(text.strip() for text in texts):
            raise CliError(f"--input {path}: input {index} is empty; every input needs some text")
    return inputs


def _where_undecodable(path: str) -> str:
    """"byte 0xNN at line L, column C": the first byte of ``path`` that is not UTF-8."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        head = raw[:e.start]
        line, column = head.count(b"\n") + 1, e.start - (head.rfind(b"\n") + 1) + 1
        return f"byte 0x{raw[e.start]:02x} at line {line}, column {column}"
    return "it changed while being read"


def _read_json(path: str, columns: Columns | None) -> list[Input]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CliError(f"--input {path} is not valid JSON ({e}); --format json expects a JSON list") from e
    if not isinstance(data, list):
        raise CliError(f"--input {path} holds a JSON {type(data).__name__}; --format json expects a list")
    inputs: list[Input] = []
    for index, entry in enumerate(data):
        where = f"--input {path}, item {index}"
        if isinstance(entry, str) and columns is None:
            inputs.append(entry)
        elif isinstance(entry, dict):
            if columns is None:
                raise CliError(
                    f"{where} is an object: pass --column to name its input field "
                    f"(its fields are: {', '.join(map(str, entry)) or '(none)'})"
                )
            inputs.append(_from_record(entry, columns, where))
        else:
            expected = "an object" if columns is not None else "a string (or, with --column, an object)"
            raise CliError(f"{where} is {json.dumps(entry)[:40]}; expected {expected}")
    return inputs


def _read_csv(path: str, columns: Columns | None) -> list[Input]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, strict=True)  # strict: a truncated quoted field is an error, not a value
        try:
            return _csv_inputs(path, reader, columns)
        except csv.Error as e:
            raise CliError(f"--input {path} is not valid CSV after line {reader.line_num} ({e}); it may be truncated: "
                           "--format csv expects a header row and one row per input") from e


def _csv_inputs(path: str, reader: csv.DictReader, columns: Columns | None) -> list[Input]:
    header = reader.fieldnames or []
    if columns is None:
        if len(header) != 1:
            raise CliError(
                f"--input {path} has {len(header)} columns ({', '.join(header) or 'none'}); "
                "pass --column to choose the input column"
            )
        columns = Columns(((header[0], header[0]),))
    missing = [name for name in columns.names() if name not in header]
    if missing:
        raise CliError(f"--input {path} has no column {missing[0]!r}; its columns are: {', '.join(header)}")
    return [_from_record(row, columns, f"--input {path}, row {index + 1}") for index, row in enumerate(reader)]


def iter_pipe(stream: IO[str], columns: Columns | None, name: str = "stdin",
              skipped: list[int] | None = None) -> Iterator[Input]:
    """Inputs from a line stream, one per non-blank line, yielded as soon as each line arrives.

    A line that is not valid UTF-8 is skipped with a warning naming it, and the run goes on. Its number is added
    to ``skipped`` when given (the caller reports them at the end, see :func:`undecodable_lines`); without it,
    :func:`undecodable_lines`'s error is raised when the stream ends. ``stream`` should decode with
    ``errors="surrogateescape"`` (:func:`tolerant_text`); a strict one is switched to it.
    """
    stream = tolerant_text(stream)
    report_at_end = skipped is None
    skipped = [] if skipped is None else skipped
    # readline() instead of `for line in stream`, so that no read-ahead delays a line from an interactive pipe.
    for number, line in enumerate(iter(stream.readline, ""), start=1):
        line = line.rstrip("\r\n")
        bad = _first_undecodable(line)
        if bad is not None:
            warn(f"{name} line {number} is not valid UTF-8 (byte 0x{ord(line[bad]) - 0xDC00:02x} at column "
                 f"{bad + 1}); skipped it")
            skipped.append(number)
            continue
        if not line.strip():
            continue
        if columns is None or not columns.multi:
            yield line
            continue
        fields = line.split("\t")
        if len(fields) != len(columns.pairs):
            raise CliError(
                f"input line {number} has {len(fields)} tab-separated field(s); --column {','.join(columns.names())} "
                f"expects {len(columns.pairs)}"
            )
        yield {key: field for (key, _), field in zip(columns.pairs, fields)}
    if skipped and report_at_end:
        raise undecodable_lines(name, skipped)


def undecodable_lines(name: str, skipped: list[int]) -> CliError:
    """The error that ends a run whose input ``name`` had lines that are not valid UTF-8 (numbers ``skipped``)."""
    lines = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
    return CliError(f"{name} had {len(skipped)} line(s) that are not valid UTF-8 (line {lines}), skipped; every "
                    "other line was processed: convert the input to UTF-8 (e.g. iconv -f latin1 -t utf-8) and run "
                    "those lines again")


def tolerant_text(stream: IO[str]) -> IO[str]:
    """``stream`` decoding undecodable bytes to lone surrogates (``surrogateescape``) instead of raising."""
    if getattr(stream, "errors", None) not in (None, "surrogateescape") and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")
    return stream


def _first_undecodable(line: str) -> int | None:
    """Index of the first byte ``surrogateescape`` could not decode, or None for a clean line."""
    for index, char in enumerate(line):
        if "\udc80" <= char <= "\udcff":
            return index
    return None


# ------------------------------------------------------------------------------------------------------ writers
class _PipeWriter:
    """To stdout: one JSON object per input and line, flushed at once (streaming)."""

    def write(self, results: list[dict]) -> None:
        try:
            sys.stdout.write(_pipe_line(results))
            sys.stdout.flush()
        except OSError as e:  # e.g. `> out.jsonl` on a full disk; a reader that left (EPIPE) is handled by main
            if is_io_fault(e):
                raise io_fault(e, "stdout") from e
            raise

    def close(self, success: bool) -> None:
        """Nothing to do: every line was printed as soon as it was ready."""


def _pipe_line(results: list[dict]) -> str:
    item = results[0] if len(results) == 1 else results
    return json.dumps(item, ensure_ascii=False) + "\n"


class _CollectingWriter:
    """Collects every output and writes them at the end, only if every input succeeded: to stdout, or atomically
    to ``--output`` (see :mod:`.output_file`: a failed or interrupted run leaves no file, a failed write loses
    no result)."""

    def __init__(self, fmt: str, path: str | None, fields: tuple[str, ...], overwrite: bool) -> None:
        self.fmt, self.path, self.fields, self.overwrite = fmt, path, fields, overwrite
        self.results: list[list[dict]] = []

    def write(self, results: list[dict]) -> None:
        self.results.append(results)

    def render(self, stream: IO[str]) -> None:
        """Write every collected output to ``stream`` in this writer's format."""
        if self.fmt == "pipe":
            stream.writelines(_pipe_line(results) for results in self.results)
        elif self.fmt == "json":
            json.dump([row for results in self.results for row in results], stream, ensure_ascii=False, indent=2)
            stream.write("\n")  # flattened, as 4.x did
        else:
            writer = csv.DictWriter(stream, fieldnames=list(self.fields), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(row for results in self.results for row in results)

    def close(self, success: bool) -> None:
        if not success:
            return
        if self.path is None:
            self.render(sys.stdout)
            sys.stdout.flush()
            return
        output = None
        try:
            output = AtomicOutput(self.path, self.overwrite)
            self.render(output.stream)
            output.commit()
        except OSError as e:
            suffix = {"pipe": ".jsonl", "json": ".json", "csv": ".csv"}[self.fmt]
            raise rescue(self.path, suffix, self.render, e) from e
        finally:
            if output is not None:
                output.discard()


def open_writer(fmt: str, output: str | None, task: Task, overwrite: bool = False) -> _PipeWriter | _CollectingWriter:
    """The writer for ``fmt``: to ``output`` if given (replacing an existing file only with ``overwrite``), else
    to stdout (pipe results stream there as they come)."""
    if fmt == "pipe" and output is None:
        return _PipeWriter()
    return _CollectingWriter(fmt, output, task.csv_fields, overwrite)
