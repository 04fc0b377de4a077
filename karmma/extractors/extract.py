"""``karmma extract``: read a dataset through its registered reader (:mod:`karmma.data.readers.base`),
run the frozen teacher- and student-sized encoders chosen by each modality's kind, and write a
resumable feature store.

Clips are written a storage chunk at a time, each chunk flushed to disk before its samples are
marked done (:mod:`karmma.data.store_writer`): a re-run resumes where the last one stopped, having
to redo at most one chunk, whether the run was interrupted (Ctrl-C, SIGTERM: a clean stop), killed
or stopped by a full disk. A corrupt file stops the run with its name (``on_error="raise"``) or is recorded as an absent
modality with a warning (``on_error="absent"``): nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from karmma.data.raw import drop_failed
from karmma.data.readers.base import DatasetReader, SampleRef, get_reader
from karmma.data.store import FeatureStoreWriter
from karmma.data.store_provenance import mixed_flow
from karmma.data.store_provenance import record as record_provenance
from karmma.data.store_summary import store_summary, summary_path
from karmma.errors import DataError, Interrupted
from karmma.extractors.encoders import SIZES, encode, token_valid, whole_clip_tokens
from karmma.extractors.families import (  # noqa: F401  (backbone_encoder, pool_encoder: their home before 0.2)
    NUM_TOKENS,
    Encoder,
    backbone_encoder,
    pool_encoder,
)
from karmma.faults import fault_point
from karmma.modalities import ModalitySpec
from karmma.outputs import check_file_writable, not_an_input, write_json_atomic
from karmma.progress import progress_bar
from karmma.registries import EXTRACTORS

log = logging.getLogger(__name__)


def encoder_specs(
    encoders: dict[str, dict[str, Encoder]], modalities: tuple[str, ...]
) -> dict[str, list[ModalitySpec]]:
    return {
        size: [
            ModalitySpec(m, getattr(encoders[size][m], "num_tokens", NUM_TOKENS), encoders[size][m].dim)
            for m in modalities
        ]  # fmt: skip
        for size in SIZES
    }


def _job(ref: SampleRef, reader: DatasetReader, modalities: tuple[str, ...], on_error: str, encoders):
    raw = reader.load(ref, modalities, on_error)
    valid = getattr(raw, "valid", {})
    why = {**getattr(raw, "absent", {}), **drop_failed(raw, modalities)}
    feats: dict[str, dict[str, np.ndarray]] = {size: {} for size in SIZES}
    tokens: dict[str, dict[str, np.ndarray]] = {size: {} for size in SIZES}
    for m in modalities:
        if m in raw:
            for size in SIZES:
                enc = encoders[size][m]
                feats[size][m] = encode(enc, raw[m], valid.get(m))
                if m in valid:
                    tokens[size][m] = token_valid(valid[m], len(feats[size][m]), whole_clip_tokens(enc))
    absent = {m: why.get(m, "not in the sample") for m in modalities if m not in raw}
    return feats, [m in raw for m in modalities], absent, tokens, getattr(raw, "duration", None)


def write_summary(out: Path) -> dict:
    """``<store>.summary.json``, recomputed from the store (:func:`karmma.data.store_summary.store_summary`):
    per modality how many samples lack it and why, and the samples left out because nothing could
    be read — the store as it is, whatever runs wrote it."""
    summary = store_summary(out)
    write_json_atomic(summary_path(out), summary)
    return summary


def _summary_after_stop(out: Path) -> dict | None:
    """The summary of a stopped run, if it can be written (the stop's own error comes first)."""
    try:
        return write_summary(out)
    except DataError as e:
        log.warning("%s", e)
        return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or ``kill``'s stop) ends the work as Ctrl-C does: a clean stop.
    Only the first one does; later ones are ignored while that stop completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def stop(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_extract(
    dataset: str,
    root: str | Path,
    out: str | Path,
    split: str = "all",
    encoder: str = "pool",
    weights: str | Path | None = None,
    modalities: tuple[str, ...] | None = None,
    resume: bool = True,
    progress: bool = False,
    on_error: str | None = None,
    limit: int | None = None,
    workers: int = 1,
    dtype: str = "float32",
    options: dict | None = None,
    allow_mixed_flow: bool = False,
) -> Path:
    """Extract ``dataset`` under ``root`` into the store ``out`` (see the module docstring).
    ``options`` go to the reader (e.g. ``annotations``); ``on_error=None`` takes the reader's
    default. Absent modalities are counted, with their reasons, in ``<out>.summary.json``.
    Interrupted (Ctrl-C, or SIGTERM under :func:`sigterm_as_interrupt`), it writes what is done
    and raises :class:`~karmma.errors.Interrupted` saying how to resume. Each sample's sources (where
    its flow, rgb, audio come from) are recorded in the store (:mod:`karmma.data.store_provenance`);
    samples whose flow would come from different algorithms are refused unless ``allow_mixed_flow``."""
    root, out = Path(root), Path(out)
    check_file_writable(out, "feature store")  # before the long work: a read-only or full --out fails now
    not_an_input(out, {f"--{k}": v for k, v in (options or {}).items() if isinstance(v, (str, Path))})  # annotations
    reader = get_reader(dataset, **(options or {}))
    on_error = on_error or reader.on_error
    modalities = tuple(modalities or reader.default_modalities)
    unknown = [m for m in modalities if m not in reader.modalities]
    if unknown:
        raise DataError(f"{dataset} has no modality {unknown}; it has {sorted(reader.modalities)}")
    refs = reader.samples(root, split)[:limit]
    ids = [r.id for r in refs]
    tasks, class_names = reader.tasks(refs)
    labels = {t: [r.labels[t] for r in refs] for t in tasks}
    kinds = {m: reader.modalities[m] for m in modalities}
    family = EXTRACTORS.get(encoder)
    encoders = {size: family(kinds, size, weights) for size in SIZES}
    sources = [reader.sources(r, modalities) for r in refs]  # provenance, before any media is read
    mixed = mixed_flow(sources, ids)
    if mixed and not allow_mixed_flow:
        raise DataError(f"{out}: {mixed}")
    extra = {**reader.extra, "encoder": encoder, "reader": dataset,
             "clip_tokens": [m for m in modalities if whole_clip_tokens(encoders["teacher"][m])],
             "contract": dict(reader.contract),
             "sources": {m: sorted({s[m] for s in sources if m in s}) for m in modalities},
             "kinds": {m: [k.kind, k.channels] for m, k in kinds.items()}}  # fmt: skip
    if weights:  # where the family's weights are: `predict --clip` loads the same ones
        extra["weights"] = str(Path(weights).resolve())
    fresh = not (resume and out.exists())
    writer = FeatureStoreWriter(out, ids, labels, tasks, encoder_specs(encoders, modalities), class_names,
                                extra=extra, resume=resume, dtype=dtype)  # fmt: skip
    if fresh:  # a new store: a summary left from another would describe that one
        summary_path(out).unlink(missing_ok=True)
    todo: list[int] = []
    processed, pool, bar = 0, None, None
    try:
        try:
            todo = [i for i, d in enumerate(writer.done) if not d]
            job = functools.partial(_job, reader=reader, modalities=modalities, on_error=on_error, encoders=encoders)
            bar = progress_bar(len(ids), f"extract {dataset}", progress, initial=len(ids) - len(todo), unit="clip")
            pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
            jobs = [refs[i] for i in todo]
            results = pool.imap(job, jobs, chunksize=4) if pool else map(job, jobs)
            try:
                for i, (feats, present, why, tokens, seconds) in zip(todo, results):
                    bar.update(1)
                    if not any(present):
                        if on_error == "raise":
                            raise DataError(f"clip {ids[i]} of {root}: no modality could be read ({why}); "
                                            "remove it from the split or fix its files")  # fmt: skip
                        writer.skip(i, why)  # left undone, with its reasons: a store sample needs a modality
                    else:
                        writer.write(i, feats, present, why, tokens, seconds)  # buffered: a storage chunk at a time
                    processed += 1
                    fault_point("extract-sample")
            finally:
                if pool is not None:
                    pool.terminate()
                if bar is not None:
                    bar.close()
        finally:
            writer.close()  # what is complete is written (unless a write failed), then marked done
    except KeyboardInterrupt:
        summary = _summary_after_stop(out)
        kept = f"{summary['done']} of {len(ids)} samples are done" if summary else "what was done is kept"
        raise Interrupted(
            f"interrupted after {processed} of the {len(todo)} samples this run had to do; in {out} {kept}. "
            "Run the same command again to resume (--no-resume starts over)"
        ) from None
    except DataError:
        if not writer.failed:  # e.g. a corrupt clip with --on-error raise: the store so far is summarised
            _summary_after_stop(out)
        raise
    record_provenance(out, sources)
    summary = write_summary(out)
    for m, by_reason in summary["absent"].items():
        log.warning("%s: %s absent for %d sample(s): %s", out, m, sum(r["count"] for r in by_reason.values()),
                    "; ".join(f"{k} ({v['count']})" for k, v in by_reason.items()))  # fmt: skip
    if summary["not_written"]:
        log.warning("%s: %d sample(s) had no readable modality and were not written (listed in %s)", out,
                    len(summary["not_written"]), summary_path(out))  # fmt: skip
    return out
