"""EPIC-KITCHENS-100 evaluation and challenge submission for a model on a feature store.

``karmma evaluate ... --epic ANNOTATIONS_DIR`` adds, per model, the official metrics (verb, noun
and action top-1/top-5 overall; top-1 and top-5 on tail classes and unseen participants) with
every modality each segment has; ``karmma submit`` writes the challenge file for an (unlabelled)
store. Tail classes and unseen participants are read from the annotation folder:
``EPIC_100_tail_{verbs,nouns}.csv`` and ``EPIC_100_unseen_participant_ids_{validation,test}.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from karmma.data.dataset import FeatureSet
from karmma.data.readers import epic
from karmma.errors import DataError

EPIC_TASKS = tuple(epic.TASKS)


@torch.no_grad()
def collect_logits(model: torch.nn.Module, data: FeatureSet, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per task, (N, classes) float32 logits with each sample's own presence mask."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {t: [] for t in model.tasks}
    for start in range(0, len(data), batch_size):
        batch = data.get_batch(np.arange(start, min(len(data), start + batch_size))).to(device)
        for t, v in model(batch.tokens, batch.mask()).items():  # per token where a modality is partial
            out[t].append(v.float().cpu().numpy())
    return {t: np.concatenate(v) if v else np.zeros((0, model.tasks[t]), np.float32) for t, v in out.items()}


def _require_epic(model: torch.nn.Module, where: str) -> None:
    missing = [t for t in EPIC_TASKS if t not in model.tasks]
    if missing:
        raise DataError(f"{where}: has no {missing} head; EPIC metrics need a model trained on an EPIC store")


def segments_of(data: FeatureSet) -> list[epic.Segment]:
    """The store's samples as segments: narration id ``PXX_YY_N`` names the participant."""
    return [
        epic.Segment(nid, nid.split("_")[0], nid.rsplit("_", 1)[0], 0, 0, int(v), int(n))
        for nid, v, n in zip(data.ids, data.labels["verb"], data.labels["noun"])
    ]


def read_epic_lists(folder: str | Path) -> dict:
    """Tail verbs/nouns and unseen participants (validation and test lists, whichever exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the epic-kitchens-100-annotations folder")
    out: dict = {"tail_verbs": None, "tail_nouns": None, "unseen_participants": None}
    for key, name, col in (("tail_verbs", "EPIC_100_tail_verbs.csv", "verb"),
                           ("tail_nouns", "EPIC_100_tail_nouns.csv", "noun")):  # fmt: skip
        if (folder / name).is_file():
            out[key] = epic.read_id_list(folder / name, col)
    unseen = sorted(folder.glob("EPIC_100_unseen_participant_ids*.csv"))
    if unseen:
        out["unseen_participants"] = set().union(*(epic.read_id_list(p, "participant_id") for p in unseen))
    return out


def omitted_groups(folder: str | Path) -> list[str]:
    """The EPIC metric groups the annotation folder lacks the lists for, each with the file(s) it needs."""
    folder = Path(folder)
    out = []
    tails = [n for n in ("EPIC_100_tail_verbs.csv", "EPIC_100_tail_nouns.csv") if not (folder / n).is_file()]
    if tails:
        out.append(f"tail (no {' / '.join(tails)})")
    if not any(folder.glob("EPIC_100_unseen_participant_ids*.csv")):
        out.append("unseen (no EPIC_100_unseen_participant_ids_{validation,test}.csv)")
    return out


def epic_report(model: torch.nn.Module, data: FeatureSet, annotations: str | Path, where: str = "model") -> dict:
    _require_epic(model, where)
    if not data.labelled:
        raise DataError(f"{data.source}: has no labels (the test split); write a submission with `karmma submit`")
    logits = collect_logits(model, data)
    return epic.epic_metrics(logits["verb"], logits["noun"], segments_of(data), **read_epic_lists(annotations))


def format_epic(report: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per model and group (overall / tail / unseen), with the group's instances
    (one count, or verb/noun/action counts where they differ: the tail group)."""
    keys = [f"{t}_top{k}" for t in ("verb", "noun", "action") for k in (1, 5)]
    lines = ["| model | group | instances | " + " | ".join(keys) + " |", "|---|---|---:|" + "---:|" * len(keys)]
    for model, groups in report.items():
        for g, m in groups.items():
            counts = [m.get(f"{t}_n") for t in ("verb", "noun", "action")]
            n = "-" if None in counts else str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))
            lines.append(f"| {model} | {g} | {n} | " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def make_submission(model: torch.nn.Module, data: FeatureSet, sls: tuple[int, int, int], where: str = "model") -> dict:
    """The challenge JSON (version 0.2) for every sample of ``data``, scores = softmax of the logits."""
    _require_epic(model, where)
    logits = collect_logits(model, data)
    verb, noun = (epic.softmax(logits[t]) if len(logits[t]) else logits[t] for t in EPIC_TASKS)
    return epic.submission_json(data.ids, verb, noun, *sls)
