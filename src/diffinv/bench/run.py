"""Running a benchmark: methods × triplets → images, `results.jsonl`, summary and report.

Layout of a run directory::

    run.json                 what was run (dataset, methods, base config, model, each method's config)
    results.jsonl            one JSON line per (method, triplet), appended as each finishes
    images/<method>/<id>.png       B′          grids/<method>/<id>.png   A | A′ | B | B′ (| truth)
    loss/<method>/<id>.svg         the loss curves of the fit
    summary.md  summary.csv  report.html

Every method is a `method.Method`, built from its spec through the registry (`build.MethodBuilder`)
and called alike: `analogy(A, A′, B, seed=…)` per triplet, or `analogies` on `batch_size` triplets
at once where the method declares it (Difference Inversion: one `fit_many`); a text-using method
is given its triplet's words as `text=`, and a method that takes several examples
(`method.takes_examples`) the triplet's further example pairs as `examples=` (`--examples K`).
Triplet i is drawn with seed + i.

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
from ..method import Method, is_batched, takes_examples
from .build import EditorModel, MethodBuilder
from .datasets import BenchTriplet
from .memory import PeakMemory
from .methods import MethodSpec
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
    "EditorModel",
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


def model_device(di) -> str:
    """The device of a `DifferenceInversion`'s diffusion model ("cpu" for anything without one)."""
    return str(getattr(getattr(di, "backbone", None), "device", "cpu"))


def slug(text: str) -> str:
    """A file-system-safe name for a method spec ('alpha=0.5' → 'alpha-0.5')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# --- one method on a batch of triplets ------------------------------------------------------------------
class BenchRunner:
    """Runs methods on triplets, writing as it goes.

    di: the bench's `DifferenceInversion` (the model the run is about).
    base_config: the run's base config, which Difference Inversion methods change.
    embedders: image embedders for the directional score (named columns `<name>_directional`).
    classifier: the shapes world's attribute classifier, for exact scores of shapes triplets.
    batch_size: triplets a batched method (`method.BatchedMethod`) takes together in one
        optimisation (Difference Inversion: `DifferenceInversion.fit_many`).
    builder: builds each method from its spec (`build.MethodBuilder`: configs resolved with the
        model card's budgets, baselines on the card's models); default: one on `di` and
        `base_config` alone.
    memory: measures the peak memory of each method's drawing of each chunk, recorded in its rows
        as `peak_memory_mb` and `memory` (its kind, `memory.PeakMemory`); default: on `di`'s device.
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
        builder: MethodBuilder | None = None,
        memory: PeakMemory | None = None,
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
        self.builder = builder if builder is not None else MethodBuilder(di, base_config)
        self.memory = memory if memory is not None else PeakMemory(model_device(di))

    def run(self, methods: list[MethodSpec], triplets: list[BenchTriplet], shard: Shard = Shard()) -> int:
        """Every pending (method, triplet) of this shard; returns how many were run now."""
        for spec in methods:
            self.builder.check(spec, triplets)  # an invalid change or a missing text raises here, before any work
        mine = shard.take(list(enumerate(triplets)))
        done = {(row["method"], row["id"]) for row in read_results(self.run_dir)}
        count = 0
        try:
            with working(self.run_dir) as (worker, held):
                for spec in methods:
                    pending = [(index, t) for index, t in mine if (spec.spec, t.id) not in done]
                    step = self.batch_size if is_batched(spec.registered.load()) else 1
                    bar = tqdm(total=len(pending), desc=spec.spec, disable=not self.progress, unit="triplet")
                    while pending:
                        # the next chunk nobody else holds: another process on this directory may be taking some
                        chunk = claim_next(self.run_dir, worker, spec.spec, pending, step, key=lambda item: item[1].id)
                        if not chunk:
                            break
                        held.update((spec.spec, t.id) for _, t in chunk)
                        taken = {t.id for _, t in chunk}
                        pending = [item for item in pending if item[1].id not in taken]
                        for row, staged in self._run_chunk(spec, chunk):
                            self._commit(row, staged)
                            held.discard((spec.spec, row["id"]))
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

    def _run_chunk(self, spec: MethodSpec, chunk: list[tuple[int, BenchTriplet]]):
        """Yields (result row, its files as (temporary, final) paths) per triplet of `chunk` as soon
        as its B′ is drawn; `_commit` puts them in place."""
        method = self.builder(spec)
        images = [(t.a(), t.a_prime(), t.b()) for _, t in chunk]
        seeds = [self.seed + index for index, _ in chunk]
        texts = [self.builder.text(spec, method, t) for _, t in chunk]
        examples = None
        if any(t.examples for _, t in chunk):  # --examples K > 1: K − 1 further pairs of each triplet's edit
            if not takes_examples(method):
                raise DiffinvError(f"{spec.spec} takes one example pair (A, A′), not several")
            examples = [[(x(), y()) for x, y in t.examples] for _, t in chunk]
        # the peak is reset around the method's own work only (not the scoring of its B′ that follows)
        self.memory.start()
        drawn, shared_seconds = self._draws(method, images, seeds, texts, examples)
        shared_peak = self.memory.peak_mb()
        for (index, triplet), (a, a_prime, b) in zip(chunk, images):
            self.memory.start()
            start = time.perf_counter()
            b_prime = next(drawn)
            seconds = shared_seconds + time.perf_counter() - start
            peak = max(shared_peak, self.memory.peak_mb())
            # a method that fits DIFF tokens keeps those of its last B′ (loss history, hard text)
            tokens = getattr(method, "last_tokens", None)
            row, staged = self._record(spec, method, triplet, index, a, a_prime, b, b_prime, tokens, seconds)
            row["peak_memory_mb"], row["memory"] = round(peak, 1), self.memory.kind
            yield row, staged

    def _draws(
        self, method: Method, images: list[tuple], seeds: list[int], texts: list[dict], examples: list | None = None
    ):
        """An iterator drawing each B′ of a chunk when asked, and each triplet's share of the work
        done for all of them first (a batched method's fit, timed here; 0 otherwise). examples:
        each triplet's further example pairs, or None (then `examples=` is not passed at all)."""
        if is_batched(method):
            start = time.perf_counter()
            batch_texts = {"texts": [text["text"] for text in texts]} if method.needs_text else {}
            if examples is not None:
                batch_texts["examples"] = examples
            drawn = iter(method.analogies(images, seeds=seeds, progress=False, **batch_texts))
            return drawn, (time.perf_counter() - start) / len(images)
        extra = [{"examples": pairs} for pairs in examples] if examples is not None else [{}] * len(images)
        drawn = (
            method.analogy(a, a_prime, b, seed=seed, progress=False, **text, **more)
            for (a, a_prime, b), seed, text, more in zip(images, seeds, texts, extra)
        )
        return drawn, 0.0

    def _record(
        self,
        spec: MethodSpec,
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
        name = slug(spec.spec)
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
            images = (a, a_prime, b, b_prime, truth)
            row = self._row(spec, method, triplet, index, images, tokens, seconds, paths, stage)
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise
        return row, staged

    def _row(self, spec, method, triplet, index, images, tokens, seconds, paths, stage) -> dict:
        """The result row of one triplet: time, scores and the loss plot (written through `stage`).
        images: (A, A′, B, B′, the true B′ or None)."""
        a, a_prime, b, b_prime, truth = images
        name = slug(spec.spec)
        row = {
            "method": spec.spec,
            "id": triplet.id,
            "index": index,
            "family": triplet.family,
            "seconds": round(seconds, 4),
            **paths,
        }
        if triplet.split:
            row["split"] = triplet.split
        if triplet.examples:  # --examples K: the pairs the method was shown, its own included
            row["examples"] = 1 + len(triplet.examples)
        if method.uses_text:
            row["uses_text"] = True  # told the edit in words: not an analogy from images alone
        if getattr(tokens, "encoder_check", None) is not None:  # init="auto": which D̃ was drawn with
            row["encoder_used"] = float(tokens.encoder_check["accepted"])
            row["encoder_check_pixel"] = round(tokens.encoder_check["pixel"], 4)
            row["encoder_check_clip"] = round(tokens.encoder_check["clip"], 4)
        if tokens is not None and tokens.history.get("loss"):
            paths_loss = f"loss/{name}/{triplet.id}.svg"
            plot = loss_curves_svg(tokens.history, f"{spec.spec} · {triplet.id}")
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
