"""Running a benchmark: methods × triplets → images, `results.jsonl`, summary and report.

Layout of a run directory::

    run.json                 what was run (dataset, methods, base config, model) — checked on resume
    results.jsonl            one JSON line per (method, triplet), appended as each finishes
    images/<method>/<id>.png       B′          grids/<method>/<id>.png   A | A′ | B | B′ (| truth)
    loss/<method>/<id>.svg         the loss curves of the fit
    summary.md  summary.csv  report.html

Resuming: the same command skips every (method, triplet) already in results.jsonl; a kill loses
at most the batch being fitted. Sharding: under `accelerate launch` (or torchrun) each process
takes every WORLD_SIZE-th triplet from its RANK and appends to the same results.jsonl (one
locked write per line), so the shards merge by construction; every process rewrites the
summary when it finishes, and the last one to finish writes the complete one. Processes
started on the same directory without sharding split the work: each claims a chunk (one
triplet, or the `batch_size` triplets fitted together) under the lock before working on it
and skips what others hold (see `results.py`), so every (method, triplet) is run once.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import InversionConfig
from ..errors import DiffinvError, Interrupted
from ..grid import image_grid
from .baselines import BASELINE_METHODS
from .baselines import text_inputs as baseline_text
from .datasets import BenchTriplet
from .methods import Method
from .metrics import Embedder, directional_score, similarity_to_truth
from .plots import loss_curves_svg
from .results import (
    RESULTS,
    append_result,
    check_run_record,
    claim_next,
    deferred_interrupt,
    read_results,
    staged_path,
    working,
)

__all__ = [  # results I/O lives in .results (torch-free); these names stay importable from here
    "RESULTS",
    "BenchRunner",
    "Shard",
    "append_result",
    "check_run_record",
    "local_device",
    "read_results",
    "slug",
]


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        """RANK / WORLD_SIZE as `accelerate launch` and torchrun set them (a single process otherwise)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def take(self, items: list) -> list:
        return items[self.rank :: self.world_size]


def local_device() -> str:
    """cuda:<LOCAL_RANK> when GPUs are present (one per process under accelerate), else cpu."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return "cpu"


def slug(text: str) -> str:
    """A file-system-safe name for a method spec ('alpha=0.5' → 'alpha-0.5')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


class EditorModel:
    """The instruction editor the `on-editor` methods run on: its default config now (`config`),
    its `DifferenceInversion` on first call (`load()`, which the runner calls only if it needs it)."""

    def __init__(self, config: InversionConfig, load):
        self.config, self._load, self._di = config, load, None

    def __call__(self):
        if self._di is None:
            self._di = self._load()
        return self._di


# --- one method on a batch of triplets ------------------------------------------------------------------
class BenchRunner:
    """Runs methods on triplets with one `DifferenceInversion`, writing as it goes.

    embedders: image embedders for the directional score (named columns `<name>_directional`).
    classifier: the shapes world's attribute classifier, for exact scores of shapes triplets.
    batch_size: triplets fitted together in one optimisation (`DifferenceInversion.fit_many`).
    baselines: `bench.baselines.BaselineLoader` (name, changes) → a baseline, for baseline methods.
    editor: `EditorModel`, for the methods that run on an instruction editor (`Method.on_editor`).
    configs: each Difference Inversion method's config by spec, resolved with its model's budgets
        (`command.build_methods`); a method not in it gets `Method.config` on `base_config`.
    """

    def __init__(
        self,
        di,
        run_dir: str | Path,
        base_config: InversionConfig,
        embedders: list[Embedder],
        classifier=None,
        batch_size: int = 1,
        seed: int = 0,
        progress: bool = True,
        baselines=None,
        editor: EditorModel | None = None,
        configs: dict[str, InversionConfig] | None = None,
    ):
        if batch_size < 1:
            raise DiffinvError(f"--batch must be at least 1, got {batch_size}")
        self.di, self.run_dir, self.base_config = di, Path(run_dir), base_config
        self.embedders, self.classifier, self.batch_size, self.seed, self.progress = (
            embedders,
            classifier,
            batch_size,
            seed,
            progress,
        )
        self.baselines, self.editor = baselines, editor
        self.configs = configs or {}  # resolved per method spec (`command.build_methods`); else from base_config

    def run(self, methods: list[Method], triplets: list[BenchTriplet], shard: Shard = Shard()) -> int:
        """Every pending (method, triplet) of this shard; returns how many were run now."""
        for method in methods:
            if method.base == "oracle-caption" and any(t.caption_b_prime is None for t in triplets):
                raise DiffinvError(
                    "oracle-caption needs the ground-truth caption of B′ (shapes, or 'b_prime:' in captions.txt)"
                )
            if method.is_baseline:
                if self.baselines is None:
                    raise DiffinvError(f"{method.spec}: this runner has no baselines")
                for triplet in triplets:
                    baseline_text(method.base, triplet)  # a text-using baseline without its text raises here
                continue
            self._config(method)  # an invalid change raises here, before any work
        mine = shard.take(list(enumerate(triplets)))
        done = {(row["method"], row["id"]) for row in read_results(self.run_dir)}
        count = 0
        try:
            with working(self.run_dir) as (worker, held):
                for method in methods:
                    pending = [(index, t) for index, t in mine if (method.spec, t.id) not in done]
                    step = self.batch_size if method.fits_tokens else 1
                    bar = tqdm(total=len(pending), desc=method.spec, disable=not self.progress, unit="triplet")
                    while pending:
                        # the next chunk nobody else holds: another process on this directory may be taking some
                        chunk = claim_next(
                            self.run_dir, worker, method.spec, pending, step, key=lambda item: item[1].id
                        )
                        if not chunk:
                            break
                        held.update((method.spec, t.id) for _, t in chunk)
                        taken = {t.id for _, t in chunk}
                        pending = [item for item in pending if item[1].id not in taken]
                        for row, staged in self._run_chunk(method, chunk):
                            self._commit(row, staged)
                            held.discard((method.spec, row["id"]))
                            count += 1
                            bar.update(1)
                    bar.close()
        except KeyboardInterrupt:
            raise Interrupted(
                f"{count} result(s) of this run were written to {self.run_dir / RESULTS}, each with its images; "
                "nothing of the triplets under way was kept and no summary was written; the same command resumes"
            ) from None
        return count

    def _commit(self, row: dict, staged: list[tuple[Path, Path]]) -> None:
        """A result's files renamed into place and its row appended, with Ctrl-C held off until both
        are done; on a failure before that, its temporary files are removed."""
        try:
            with deferred_interrupt():
                for temporary, path in staged:
                    os.replace(temporary, path)
                append_result(self.run_dir, row)
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise

    def _run_chunk(self, method: Method, chunk: list[tuple[int, BenchTriplet]]):
        """Yields (result row, its files as (temporary, final) paths) per triplet of `chunk` as soon
        as its B′ is drawn; `_commit` puts them in place."""
        config = self.base_config if method.is_baseline else self._config(method)
        di = self.editor() if method.on_editor else self.di
        images = [(t.a(), t.a_prime(), t.b()) for _, t in chunk]
        fit_seconds, tokens, prompts_b = 0.0, [None] * len(chunk), None
        if method.fits_tokens:
            start = time.perf_counter()
            seeds = [self.seed + index for index, _ in chunk]
            if config.lambda_clip_b > 0:  # each triplet's tokens fitted for its B, as `analogy` does
                prompts_b = [di.describe_b(b, config, seed, False) for (_, _, b), seed in zip(images, seeds)]
            tokens = di.fit_many(
                [(a, a_prime) for a, a_prime, _ in images], config, seeds=seeds, progress=False, prompts_b=prompts_b
            )
            fit_seconds = (time.perf_counter() - start) / len(chunk)
        # None: `apply` describes B itself (an editor: no words beside the tokens; prompt_B served the fit)
        if prompts_b is None or di.backbone.takes_instructions:
            prompts_b = [None] * len(chunk)
        for (index, triplet), (a, a_prime, b), token, prompt_b in zip(chunk, images, tokens, prompts_b):
            start = time.perf_counter()
            # A and A′ score the candidates B′ when config.candidates > 1
            reference = {"reference": (a, a_prime)} if config.candidates > 1 else {}
            if method.is_baseline:
                baseline = self.baselines(method.base, method.changes)
                inputs = baseline_text(method.base, triplet)
                b_prime = baseline.analogy(a, a_prime, b, seed=self.seed + index, progress=False, **inputs)
            elif method.base == "copy-b":
                b_prime = b
            elif method.base == "oracle-caption":
                b_prime = self.di.draw(
                    triplet.caption_b_prime, b, config, seed=self.seed + index, progress=False, **reference
                )
            else:
                b_prime = di.apply(
                    token, b, seed=self.seed + index, prompt=prompt_b, config=config, progress=False, **reference
                )
            seconds = fit_seconds + time.perf_counter() - start
            yield self._record(method, triplet, index, a, a_prime, b, b_prime, token, seconds)

    def _config(self, method: Method) -> InversionConfig:
        if method.spec in self.configs:
            return self.configs[method.spec]
        return method.config(self.base_config, self.editor.config if self.editor is not None else None)

    def _record(
        self,
        method: Method,
        triplet: BenchTriplet,
        index: int,
        a,
        a_prime,
        b,
        b_prime: Image.Image,
        tokens,
        seconds: float,
    ) -> tuple[dict, list[tuple[Path, Path]]]:
        """One triplet's result row, and its files (B′, the grid, the loss plot) written under
        temporary names, as (temporary, final) paths for `_commit`."""
        truth = triplet.b_prime() if triplet.b_prime else None
        name = slug(method.spec)
        paths = {"b_prime": f"images/{name}/{triplet.id}.png", "grid": f"grids/{name}/{triplet.id}.png"}
        staged: list[tuple[Path, Path]] = []

        def stage(relative: str, save) -> None:
            path = self.run_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((staged_path(path), path))
            save(staged[-1][0])

        tiles, labels = [a, a_prime, b, b_prime], ["A", "A'", "B", "B'"]
        if truth is not None:
            tiles, labels = tiles + [truth], labels + ["true B'"]
        try:
            stage(paths["b_prime"], b_prime.save)
            stage(paths["grid"], image_grid(tiles, labels, height=128).save)
            row = self._row(method, triplet, index, (a, a_prime, b, b_prime, truth), tokens, seconds, paths, stage)
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise
        return row, staged

    def _row(self, method, triplet, index, images, tokens, seconds, paths, stage) -> dict:
        """The result row of one triplet: time, scores and the loss plot (written through `stage`).
        images: (A, A′, B, B′, the true B′ or None)."""
        a, a_prime, b, b_prime, truth = images
        name = slug(method.spec)
        row = {
            "method": method.spec,
            "id": triplet.id,
            "index": index,
            "family": triplet.family,
            "seconds": round(seconds, 4),
            **paths,
        }
        if method.is_baseline and BASELINE_METHODS[method.base].text is not None:
            row["uses_text"] = True  # told the edit in words: not an analogy from images alone
        if tokens is not None and tokens.history.get("loss"):
            paths_loss = f"loss/{name}/{triplet.id}.svg"
            plot = loss_curves_svg(tokens.history, f"{method.spec} · {triplet.id}")
            stage(paths_loss, lambda temporary: temporary.write_text(plot, encoding="utf-8"))
            row["loss_plot"] = paths_loss
            row["final_loss_tc"] = tokens.history["loss_tc"][-1]
            row["final_loss_clip"] = tokens.history["loss_clip"][-1]
            if tokens.hard_text:
                row["hard_text"] = tokens.hard_text
        for embedder in self.embedders:
            row[f"{embedder.name}_directional"] = directional_score(embedder, a, a_prime, b, b_prime)
            if truth is not None:
                row[f"{embedder.name}_to_truth"] = similarity_to_truth(embedder, b_prime, truth)
        if triplet.truth is not None and self.classifier is not None:
            from ..shapes.evaluate import score

            threshold = getattr(self.classifier, "layout_threshold", None)  # world v2 classifiers have one
            row.update(score(self.classifier.predict([b_prime])[0], triplet.truth, threshold))
        if triplet.info:
            row["info"] = triplet.info
        return row
