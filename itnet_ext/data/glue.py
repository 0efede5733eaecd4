"""GLUE benchmark TSV files and a tokenizer that needs no download.

On-disk layout (as written by the GLUE download script)::

    <glue_root>/<task dir>/train.tsv, dev.tsv, test.tsv
    MNLI: train.tsv, dev_matched.tsv, dev_mismatched.tsv, test_matched.tsv, test_mismatched.tsv

Tab-separated, no quoting. Columns per task (header names; CoLA has no header in train /
dev: ``source, label, original label, sentence``; its test file has ``index, sentence``):

=====  ==========================  ==========================  ==============================
task   text a                      text b                      label
=====  ==========================  ==========================  ==============================
CoLA   col 3 (test: ``sentence``)  -                           col 1: 0 / 1
SST-2  ``sentence``                -                           ``label``: 0 / 1
MRPC   ``#1 String``               ``#2 String``               ``Quality``: 0 / 1
QQP    ``question1``               ``question2``               ``is_duplicate``: 0 / 1
STS-B  ``sentence1``               ``sentence2``               ``score``: float in [0, 5]
MNLI   ``sentence1``               ``sentence2``               ``gold_label``: 3 classes
QNLI   ``question``                ``sentence``                ``label``: (not_)entailment
RTE    ``sentence1``               ``sentence2``               ``label``: (not_)entailment
WNLI   ``sentence1``               ``sentence2``               ``label``: 0 / 1
=====  ==========================  ==========================  ==============================

Test files have no label column; their examples get label None (the dataset returns -1, or
NaN for STS-B).
"""
from __future__ import annotations

import collections
import csv
import os
import re
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["GlueTask", "GLUE_TASKS", "glue_task", "GlueExample", "read_glue_tsv",
           "WordTokenizer", "GlueDataset", "glue_collate"]


class GlueTask(NamedTuple):
    """A GLUE task's files and columns. ``a``, ``b``, ``label``: header names (ints: column
    indices of a header-less file); ``labels``: the class names in index order (empty:
    regression); ``splits``: the file stems."""
    name: str
    dir: str
    a: object
    b: object
    label: object
    labels: Tuple[str, ...]
    splits: Tuple[str, ...] = ("train", "dev", "test")
    header: bool = True

    @property
    def num_outputs(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


_NLI = ("entailment", "not_entailment")
_BIN = ("0", "1")
GLUE_TASKS = {t.name: t for t in [
    GlueTask("cola", "CoLA", 3, None, 1, _BIN, header=False),
    GlueTask("sst2", "SST-2", "sentence", None, "label", _BIN),
    GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BIN),
    GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", _BIN),
    GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", ()),
    GlueTask("mnli", "MNLI", "sentence1", "sentence2", "gold_label",
             ("contradiction", "entailment", "neutral"),
             ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")),
    GlueTask("qnli", "QNLI", "question", "sentence", "label", _NLI),
    GlueTask("rte", "RTE", "sentence1", "sentence2", "label", _NLI),
    GlueTask("wnli", "WNLI", "sentence1", "sentence2", "label", _BIN),
]}


def glue_task(name) -> GlueTask:
    """The task called ``name`` (case and ``-`` / ``_`` ignored: "SST-2", "sst2", "STS_B")."""
    if isinstance(name, GlueTask):
        return name
    key = re.sub(r"[-_ ]", "", str(name)).lower()
    if key not in GLUE_TASKS:
        raise ValueError(f"GLUE task {name!r}: expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


class GlueExample(NamedTuple):
    a: str
    b: Optional[str]
    label: object          # int class index, float score (STS-B), or None (test files)


def read_glue_tsv(path, task) -> List[GlueExample]:
    """The examples of one GLUE TSV file of ``task``; a file without the label column (a test
    file) gives label None. Raises FileNotFoundError / ValueError naming the file and line."""
    task, path = glue_task(task), os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE {task.dir}: no such file {path!r}")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not task.header and rows and [c.strip() for c in rows[0]] == ["index", "sentence"]:
        cols, start = (1, None, None), 1       # CoLA's test file has a header
    elif not task.header:
        cols, start = (task.a, task.b, task.label), 0
    else:
        if not rows:
            raise ValueError(f"{path}: empty file, expected a header line")
        head = [c.strip() for c in rows[0]]
        need = [task.a] + ([task.b] if task.b else [])
        missing = [c for c in need if c not in head]
        if missing:
            raise ValueError(f"{path}: header {head} lacks the {task.dir} column(s) {missing}")
        cols = (head.index(task.a), head.index(task.b) if task.b else None,
                head.index(task.label) if task.label in head else None)
        start = 1
    width = max(c for c in cols if c is not None) + 1
    out = []
    for n, row in enumerate(rows[start:], start + 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < width:
            raise ValueError(f"{path}:{n}: malformed {task.dir} row: expected at least {width} "
                             f"tab-separated fields, got {len(row)}")
        a = row[cols[0]]
        b = row[cols[1]] if cols[1] is not None else None
        label = None
        if cols[2] is not None:
            raw = row[cols[2]].strip()
            if task.is_regression:
                try:
                    label = float(raw)
                except ValueError:
                    raise ValueError(f"{path}:{n}: {task.dir} label {raw!r} is not a "
                                     "float") from None
            elif raw in task.labels:
                label = task.labels.index(raw)
            else:
                raise ValueError(f"{path}:{n}: {task.dir} label {raw!r}: expected one of "
                                 f"{list(task.labels)}")
        out.append(GlueExample(a, b, label))
    return out


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class WordTokenizer:
    """Word-level vocabulary with a byte-level fallback: ids 0-3 are ``[PAD] [UNK] [CLS]
    [SEP]``, then 512 byte tokens (a word-initial and a continuation token per byte value),
    then the words. Text is split into words and punctuation marks (lower-cased when
    ``lowercase``); a word outside the vocabulary is spelled as its UTF-8 bytes, so
    :meth:`decode` inverts :meth:`encode` up to that normalisation (``[UNK]`` is used only
    with ``byte_fallback=False``)."""
    PAD, UNK, CLS, SEP = 0, 1, 2, 3
    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    BYTE0 = 4                      # word-initial byte b: BYTE0 + b; continuation: BYTE0 + 256 + b

    def __init__(self, words: Sequence[str] = (), lowercase: bool = True,
                 byte_fallback: bool = True):
        self.lowercase, self.byte_fallback = lowercase, byte_fallback
        self.words = list(words)
        self.offset = self.BYTE0 + 512
        self.index = {w: self.offset + i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int = 30000, min_freq: int = 1,
                   **kw) -> "WordTokenizer":
        """The ``max_size`` most frequent words (count >= ``min_freq``; ties by first use)."""
        tok = cls(**kw)
        counts = collections.Counter()
        for t in texts:
            if t:
                counts.update(tok.split(t))
        words = [w for w, c in counts.most_common() if c >= min_freq][:max_size]
        return cls(words, **kw)

    def __len__(self) -> int:
        return self.offset + len(self.words)

    vocab_size = property(__len__)

    def split(self, text: str) -> List[str]:
        return _WORD.findall(text.lower() if self.lowercase else text)

    def tokenize(self, text: str) -> List[int]:
        """Ids of ``text``'s words (no special tokens)."""
        ids = []
        for w in self.split(text):
            if w in self.index:
                ids.append(self.index[w])
            elif self.byte_fallback:
                bs = w.encode("utf-8")
                ids.append(self.BYTE0 + bs[0])
                ids.extend(self.BYTE0 + 256 + b for b in bs[1:])
            else:
                ids.append(self.UNK)
        return ids

    def encode(self, a: str, b: Optional[str] = None, max_len: int = 128
               ) -> Tuple[Tensor, Tensor]:
        """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, truncated (longest text first) and
        padded with ``[PAD]`` to ``max_len``: (ids (max_len,) int64, padding mask (max_len,)
        bool, True at padding)."""
        specials = 2 if b is None else 3
        if max_len < specials + 1:
            raise ValueError(f"max_len must be at least {specials + 1}, got {max_len}")
        ta, tb = self.tokenize(a), (self.tokenize(b) if b is not None else [])
        while len(ta) + len(tb) > max_len - specials:
            (ta if len(ta) >= len(tb) else tb).pop()
        ids = [self.CLS] + ta + [self.SEP] + ((tb + [self.SEP]) if b is not None else [])
        n = len(ids)
        ids = torch.tensor(ids + [self.PAD] * (max_len - n), dtype=torch.long)
        mask = torch.arange(max_len) >= n
        return ids, mask

    def decode(self, ids, skip_special: bool = True) -> str:
        """The words of ``ids`` joined by single spaces (byte tokens merged back into words)."""
        words, buf = [], None
        for i in (ids.tolist() if isinstance(ids, Tensor) else ids):
            if self.BYTE0 + 256 <= i < self.offset and buf is not None:
                buf.append(i - self.BYTE0 - 256)
                continue
            if buf is not None:
                words.append(bytes(buf).decode("utf-8", errors="replace"))
                buf = None
            if self.BYTE0 <= i < self.BYTE0 + 256:
                buf = [i - self.BYTE0]
            elif i >= self.offset:
                words.append(self.words[i - self.offset])
            elif not skip_special or i == self.UNK:
                words.append(self.SPECIALS[i] if i < self.BYTE0 else "[UNK]")
        if buf is not None:
            words.append(bytes(buf).decode("utf-8", errors="replace"))
        return " ".join(words)


class GlueDataset(torch.utils.data.Dataset):
    """One split of a GLUE task -> (token ids (max_len,), padding mask (max_len,), label).

    ``root``: the task directory (holding ``<split>.tsv``) or the GLUE root holding it.
    ``tokenizer``: default, a :class:`WordTokenizer` built from the task's ``train.tsv``
    (share ``dataset.tokenizer`` between splits). Labels: int64 class index (-1 in test
    files), float32 score for STS-B (NaN in test files)."""

    def __init__(self, root, task, split: str = "train", tokenizer: Optional[WordTokenizer] = None,
                 max_len: int = 128, vocab_size: int = 30000):
        self.task = glue_task(task)
        root = os.fspath(root)
        if os.path.isdir(os.path.join(root, self.task.dir)):
            root = os.path.join(root, self.task.dir)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"GLUE {self.task.dir} root: no such directory {root!r}")
        if split not in self.task.splits:
            raise ValueError(f"GLUE {self.task.dir} split {split!r}: expected one of "
                             f"{list(self.task.splits)}")
        self.root, self.split, self.max_len = root, split, max_len
        self.examples = read_glue_tsv(os.path.join(root, f"{split}.tsv"), self.task)
        if tokenizer is None:
            train = self.examples if split == "train" else \
                read_glue_tsv(os.path.join(root, "train.tsv"), self.task)
            tokenizer = WordTokenizer.from_texts(
                (t for e in train for t in (e.a, e.b) if t), max_size=vocab_size)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        e = self.examples[i]
        ids, mask = self.tokenizer.encode(e.a, e.b, self.max_len)
        if self.task.is_regression:
            label = torch.tensor(float("nan") if e.label is None else e.label, dtype=torch.float32)
        else:
            label = torch.tensor(-1 if e.label is None else e.label, dtype=torch.long)
        return ids, mask, label


def glue_collate(batch):
    """Stack (ids, mask, label) items and drop the trailing columns that are padding in every
    row: (ids (B, T), mask (B, T), labels (B,))."""
    ids = torch.stack([b[0] for b in batch])
    mask = torch.stack([b[1] for b in batch])
    keep = int((~mask).sum(1).max()) if len(batch) else 0
    return ids[:, :keep], mask[:, :keep], torch.stack([b[2] for b in batch])
