"""VQAv2: question / annotation JSON files, the top-K answer vocabulary, soft scores, COCO
images.

On-disk layout (the files of visualqa.org and cocodataset.org)::

    v2_OpenEnded_mscoco_train2014_questions.json
        {"questions": [{"image_id": 458752, "question": "What is this?", "question_id": 458752000}, ...]}
    v2_mscoco_train2014_annotations.json
        {"annotations": [{"question_id": 458752000, "image_id": 458752,
                          "multiple_choice_answer": "net",
                          "answers": [{"answer": "net", "answer_confidence": "yes",
                                       "answer_id": 1}, ...  (10 answers)]}, ...]}
    <image_root>/COCO_train2014_000000458752.jpg       (:func:`coco_image_path`)

The target of a question is its soft score vector over the answer vocabulary:
``min(1, count / 3)`` for each vocabulary answer given ``count`` times by the 10 annotators
(:func:`soft_scores`). Test questions (no annotations file) get an all-zero target.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .glue import WordTokenizer
from .images import EvalTransform, load_rgb, to_tensor

__all__ = ["normalize_answer", "load_vqa", "answer_vocabulary", "soft_scores", "coco_image_path",
           "VQADataset", "vqa_collate"]


def normalize_answer(a: str) -> str:
    """Lower case, surrounding spaces and a trailing period removed."""
    a = a.strip().lower()
    return a[:-1].rstrip() if a.endswith(".") else a


def _load_json(path, key: str, what: str) -> list:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQA {what}: no such file {path!r}")
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a {key!r} list")
    return obj[key]


def load_vqa(questions_file, annotations_file=None) -> List[dict]:
    """One dict per question: ``question_id``, ``image_id``, ``question`` and, with an
    annotations file, ``answers`` (the annotators' normalised answers) and
    ``multiple_choice_answer``; in the questions file's order."""
    out = []
    for n, q in enumerate(_load_json(questions_file, "questions", "questions file")):
        missing = [k for k in ("image_id", "question", "question_id") if k not in q]
        if missing:
            raise ValueError(f"{questions_file}: question {n} lacks {missing}")
        out.append({"question_id": q["question_id"], "image_id": int(q["image_id"]),
                    "question": q["question"]})
    if annotations_file is not None:
        by_id = {q["question_id"]: q for q in out}
        for n, a in enumerate(_load_json(annotations_file, "annotations", "annotations file")):
            if "question_id" not in a or "answers" not in a:
                raise ValueError(f"{annotations_file}: annotation {n} lacks 'question_id' or "
                                 "'answers'")
            q = by_id.get(a["question_id"])
            if q is None:
                raise ValueError(f"{annotations_file}: annotation {n} has question_id "
                                 f"{a['question_id']!r}, which is not in {questions_file}")
            q["answers"] = [normalize_answer(x["answer"]) for x in a["answers"]]
            mc = a.get("multiple_choice_answer")
            if mc is None and q["answers"]:           # the annotators' most common answer
                mc = collections.Counter(q["answers"]).most_common(1)[0][0]
            q["multiple_choice_answer"] = normalize_answer(mc or "")
    return out


def answer_vocabulary(entries: Sequence[dict], top_k: int = 3129) -> List[str]:
    """The ``top_k`` most frequent ``multiple_choice_answer`` s (ties: first seen first)."""
    counts = collections.Counter(e["multiple_choice_answer"] for e in entries
                                 if e.get("multiple_choice_answer"))
    if not counts:
        raise ValueError("answer_vocabulary: the entries have no annotated answers (pass an "
                         "annotations file)")
    return [a for a, _ in counts.most_common(top_k)]


def soft_scores(answers: Sequence[str], answer_to_idx: Dict[str, int]) -> Tensor:
    """(K,) float32: ``min(1, count / 3)`` at each vocabulary answer among ``answers``."""
    t = torch.zeros(len(answer_to_idx))
    for a, c in collections.Counter(normalize_answer(a) for a in answers).items():
        if a in answer_to_idx:
            t[answer_to_idx[a]] = min(1.0, c / 3.0)
    return t


def coco_image_path(image_root, split: str, image_id: int) -> str:
    """``image_root/COCO_<split>_<image_id, 12 digits>.jpg`` (split e.g. "train2014")."""
    return os.path.join(os.fspath(image_root), f"COCO_{split}_{int(image_id):012d}.jpg")


class VQADataset(torch.utils.data.Dataset):
    """VQAv2 questions -> (image (3, S, S) float, question ids (T,) int64 with T <= max_len,
    soft target (K,) float32).

    ``answers``: the vocabulary (default: the ``top_k`` of this split's annotations; pass the
    train set's ``dataset.answers`` to the others); ``tokenizer``: a
    :class:`~itnet_ext.data.glue.WordTokenizer` (default: built from these questions);
    ``transform``: maps the [0, 1] image tensor (default:
    :class:`~itnet_ext.data.images.EvalTransform` of ``image_size``). With
    ``drop_unanswerable``, questions none of whose answers is in the vocabulary are dropped
    (the usual training filter). Batch with :func:`vqa_collate`."""

    def __init__(self, questions_file, annotations_file, image_root, image_split: str = "train2014",
                 answers: Optional[Sequence[str]] = None, top_k: int = 3129,
                 tokenizer: Optional[WordTokenizer] = None, max_len: int = 14,
                 image_size: int = 224, transform: Optional[Callable[[Tensor], Tensor]] = None,
                 drop_unanswerable: bool = False):
        self.image_root, self.image_split = os.fspath(image_root), image_split
        self.max_len = max_len
        if not os.path.isdir(self.image_root):
            raise FileNotFoundError(f"VQA image_root: no such directory {self.image_root!r}")
        self.entries = load_vqa(questions_file, annotations_file)
        self.answers = (list(answers) if answers is not None
                        else answer_vocabulary(self.entries, top_k))
        self.answer_to_idx = {a: i for i, a in enumerate(self.answers)}
        if drop_unanswerable:
            self.entries = [e for e in self.entries
                            if any(a in self.answer_to_idx for a in e.get("answers", ()))]
        if not self.entries:
            raise ValueError(f"VQA {questions_file}: no questions left")
        self.tokenizer = tokenizer or WordTokenizer.from_texts(e["question"] for e in self.entries)
        self.transform = transform if transform is not None else EvalTransform(image_size)

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, i: int) -> str:
        return coco_image_path(self.image_root, self.image_split, self.entries[i]["image_id"])

    def __getitem__(self, i: int):
        e, path = self.entries[i], self.image_path(i)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VQA question {e['question_id']}: image {path!r} not found")
        image = self.transform(to_tensor(load_rgb(path)))
        ids = torch.tensor(self.tokenizer.tokenize(e["question"])[:self.max_len] or
                           [WordTokenizer.UNK], dtype=torch.long)
        return image, ids, soft_scores(e.get("answers", ()), self.answer_to_idx)


def vqa_collate(batch, pad_id: int = WordTokenizer.PAD):
    """(images (B, 3, S, S), question ids (B, T) padded with ``pad_id``, targets (B, K))."""
    T = max(b[1].numel() for b in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    for r, b in enumerate(batch):
        ids[r, :b[1].numel()] = b[1]
    return torch.stack([b[0] for b in batch]), ids, torch.stack([b[2] for b in batch])
