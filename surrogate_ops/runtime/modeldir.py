"""A model directory: the one on-disk format of a trained surrogate, read and written here only.

    surrogate.json  architecture, sizes, limits, mcpu, training target, cycle units, metrics
    vocab.json      the tokenizer's vocabulary
    model.pt        torch checkpoint (fine-tuning, the torch engines)
    model.onnx      the ONNX export (ONNX Runtime, TVM); written by `export`
    parts.onnx      where the network takes them (`dep`), the same network from a batch's parts
                    (`batching.parts`): ONNX Runtime's graph, cheaper per block; written by `export`
    builds/         compiled builds, a set of files per platform (see `Builds`)
    VERSION         in a bento: the registered version the directory was staged from

The registry stores it as the pyfunc model's one artifact, training writes it, and every engine,
the predictor, the compile stage and the service read it through `ModelDir`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from surrogate_ops.config import DEFAULT_MODEL, PRETRAINED, model_name
from surrogate_ops.errors import SurrogateOpsError

META, VOCAB, CHECKPOINT, ONNX, PARTS, STAMP = "surrogate.json", "vocab.json", "model.pt", "model.onnx", "parts.onnx", "VERSION"


def adopt_bundled_parts(path: Path) -> Path:
    """`path`, a downloaded model directory, with the bundled surrogate's `parts.onnx` copied in where
    it has none and its `model.onnx` is a bundled surrogate's byte for byte: a version registered from
    the package before its bundles carried that graph (same weights, so the same network) runs from
    parts like a fresh registration. Anything else is left as it is."""
    onnx = Path(path) / ONNX
    if (Path(path) / PARTS).is_file() or not onnx.is_file():
        return path
    size = onnx.stat().st_size
    for name in bundled_names():
        bundled = PRETRAINED / name
        if ((bundled / PARTS).is_file() and (bundled / ONNX).stat().st_size == size
                and (bundled / ONNX).read_bytes() == onnx.read_bytes()):
            partial = Path(path) / f".{PARTS}.{os.getpid()}"
            try:
                shutil.copyfile(bundled / PARTS, partial)
                os.replace(partial, Path(path) / PARTS)
            except OSError:  # a read-only cache: the graph from tokens answers the same, slower
                partial.unlink(missing_ok=True)
            break
    return path


def bundled_names() -> list[str]:
    """The registered names of the surrogates bundled with the package (`pretrained/<name>/`), the
    default CPU's (llvm-mca-haswell) first."""
    found = [p.name for p in PRETRAINED.iterdir() if ModelDir.holds_one(p)] if PRETRAINED.is_dir() else []
    return sorted(found, key=lambda name: (name != DEFAULT_MODEL, name))


@dataclass(frozen=True)
class Builds:
    """A folder of compiled builds (a model directory's `builds/`, or `compile --out`): per platform
    `<platform>.so` and its record `<platform>.json`, and for a tuned build `<platform>-tuned.so`,
    `-tuned.json` and the tuning database `-tuned.db/`."""

    folder: Path

    def library(self, platform: str, tuned: bool = False) -> Path:
        return self.folder / f"{platform}{'-tuned' if tuned else ''}.so"

    def record_path(self, platform: str, tuned: bool = False) -> Path:
        return self.library(platform, tuned).with_suffix(".json")

    def database(self, platform: str) -> Path:
        return self.folder / f"{platform}-tuned.db"

    def record(self, platform: str, tuned: bool = False) -> dict | None:
        """A build's record (what was built, checked and timed), None when there is no such build."""
        path = self.record_path(platform, tuned)
        if not (path.is_file() and self.library(platform, tuned).is_file()):
            return None
        return json.loads(path.read_text())

    def files(self, platform: str) -> list[Path]:
        """The build's libraries and records that exist (the database is a folder, see `database`)."""
        paths = (self.library(platform), self.record_path(platform),
                 self.library(platform, True), self.record_path(platform, True))
        return [path for path in paths if path.is_file()]


@dataclass(frozen=True)
class ModelDir:
    """A trained surrogate on disk, its `surrogate.json` read once."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | Path | ModelDir) -> ModelDir:
        """A model directory; a bare name that is no directory here but a bundled surrogate's
        (`llvm-mca-haswell`) opens the bundled one, from the package's own folder."""
        if isinstance(path, ModelDir):
            return path
        path = Path(path)
        if not (path / META).is_file() and len(path.parts) == 1 and cls.holds_one(PRETRAINED / path):
            path = PRETRAINED / path
        if not (path / META).is_file():
            hint = f"; the bundled ones are {', '.join(bundled_names())}" if len(path.parts) == 1 else ""
            raise SurrogateOpsError(f"{path} is not a surrogate model directory (no {META}){hint}")
        return cls(path, json.loads((path / META).read_text()))

    @classmethod
    def bundled(cls, name: str) -> ModelDir:
        """A surrogate the package bundles, by registered name (`llvm-mca-haswell`) or by its mcpu
        (`haswell`), wherever Python runs: `Predictor(ModelDir.bundled("haswell"))`."""
        for folder in (PRETRAINED / name, PRETRAINED / model_name(name)):
            if len(Path(name).parts) == 1 and cls.holds_one(folder):
                return cls.open(folder)
        raise SurrogateOpsError(f"no bundled surrogate {name!r}; the package bundles {', '.join(bundled_names())}")

    @staticmethod
    def holds_one(path: str | Path) -> bool:
        return (Path(path) / META).is_file()

    @classmethod
    def write(cls, path: str | Path, checkpoint: dict, tokenizer, meta: dict) -> ModelDir:
        """Write checkpoint, vocabulary and metadata (the ONNX graph is `export`'s to add)."""
        import torch

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path / CHECKPOINT)
        tokenizer.save(path / VOCAB)
        return cls(path, {}).with_meta(**meta)

    def with_meta(self, **fields) -> ModelDir:
        """The same directory with `fields` added to its metadata (on disk too)."""
        text = json.dumps({**self.meta, **fields}, indent=1, sort_keys=True, default=str)
        (self.path / META).write_text(text)
        return ModelDir(self.path, json.loads(text))  # as a reader will see it (non-JSON values as text)

    @property
    def onnx(self) -> Path:
        return self.path / ONNX

    @property
    def parts_onnx(self) -> Path | None:
        """The graph from a batch's parts, where the directory holds one."""
        path = self.path / PARTS
        return path if path.is_file() else None

    @property
    def vocab(self) -> Path:
        return self.path / VOCAB

    @property
    def builds(self) -> Builds:
        return Builds(self.path / "builds")

    def tokenizer(self):
        from surrogate_ops.blocks.tokenizer import Tokenizer

        return Tokenizer.load(self.vocab)

    def checkpoint(self) -> dict:
        import torch

        return torch.load(self.path / CHECKPOINT, map_location="cpu", weights_only=True)

    def module(self):
        """The torch module, in eval mode."""
        from surrogate_ops import models

        return models.from_checkpoint(self.checkpoint()).eval()

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def mcpu(self) -> str | None:
        return self.meta.get("mcpu")

    @property
    def max_instructions(self) -> int:
        return int(self.meta["max_instructions"])

    @property
    def program_parameters(self) -> dict:
        """A parameter-conditioned surrogate's parameters: names, expert defaults and the llvm-mca
        evaluations its training data cost; {} for a surrogate of llvm-mca's defaults."""
        return self.meta.get("program_parameters") or {}

    @property
    def version_stamp(self) -> str | None:
        stamp = self.path / STAMP
        return stamp.read_text().strip() if stamp.is_file() else None

    def stamp(self, version: str) -> None:
        (self.path / STAMP).write_text(f"{version}\n")

    def shape(self) -> dict:
        """The architecture as training's fields (arch, preset, sizes): its size preset when one
        matches, and the exact sizes either way, so a from-scratch network is the same network.
        A wrapper (conditioned, confident) gives its block encoder's."""
        from surrogate_ops import presets
        from surrogate_ops.models import WRAPPERS

        arch, config = self.meta["arch"], self.meta["config"]
        if arch in WRAPPERS:
            arch, config = config["base"], config["base_config"]
        sizes = {k: v for k, v in config.items() if k != "vocab_size"}
        table = presets.load("model_sizes")[arch]
        preset = next((p for p, v in table.items() if all(sizes.get(k) == x for k, x in v.items())), "small")
        return {"arch": arch, "preset": preset, "sizes": sizes}

    def __str__(self) -> str:
        return str(self.path)
