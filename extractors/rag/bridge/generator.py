"""The base of the report-generation bridges (MAIRA-2, Merlin, HistGen): a model that writes one
report per image file, loaded under the policy of ``extractors.loading``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from extractors.base import SampleError
from extractors.loading import ModelSpec
from extractors.rag.bridge.base import Bridge, BridgeInputs, BridgeRows, sample_reason
from extractors.readers import resolve_path


class ReportGenerator(Bridge):
    """A report-generation model: ``generate(paths)`` -> one report per file (or an exception).

    A missing model (``load``) fails the whole job with the loader's message; one file that
    cannot be read or generated from fails its sample only.
    """

    name = "generator"
    generative = True

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__(cfg, device)
        self.batch_size = int(cfg.get("batch_size", 1))

    def load(self) -> None:  # pragma: no cover - needs weights
        raise NotImplementedError

    def generate(self, paths: Sequence[Path]) -> list[str | BaseException]:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return ModelSpec.from_config(self.name, self.cfg).describe()

    def fill(self, inputs: BridgeInputs, rows: BridgeRows) -> dict[str, Any]:
        self.load()  # a missing model fails the whole job, with the loader's message
        todo = [i for i in range(len(rows.sample_ids)) if inputs.present[i]]
        for b0 in range(0, len(todo), self.batch_size):
            self.fill_batch(inputs, rows, todo[b0 : b0 + self.batch_size])
        return {"generator": self.describe()}

    def fill_batch(self, inputs: BridgeInputs, rows: BridgeRows, batch: list[int]) -> None:
        """Generate the reports of the rows ``batch`` (one ``generate`` call)."""
        paths: dict[int, Path] = {}  # row -> its readable file, in batch order
        for i in batch:
            try:
                paths[i] = resolve_path(
                    inputs.root, inputs.values[i], allow_dir=inputs.kind == "volume"
                )
            except SampleError as exc:
                rows.set_failed(i, self.name, str(exc))
        results = self.generate(list(paths.values()))
        for i, res in zip(paths, results, strict=True):
            if isinstance(res, BaseException):
                rows.set_failed(i, self.name, sample_reason(res))
            elif not str(res).strip():
                rows.set_failed(i, self.name, "empty generated report")
            else:
                rows.set_row(i, " ".join(str(res).split()), self.name, "ok", None)
