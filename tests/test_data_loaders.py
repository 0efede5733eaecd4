"""itnet_ext.data: the benchmark loaders on small files generated here.

Oracles: the pixel values written with PIL; the label columns as written; a tokenizer
round trip; sampled points at distance ~0 from the mesh surface, split between faces in
proportion to their areas (a binomial tolerance); the VQA soft score min(1, count / 3) for
known answer counts; the same seed gives the same data; each bad input raises an error
naming the file and what was expected. The ``write_*`` helpers are shared with
tests/test_recipes.py."""
import json
import math
import os

import numpy as np
import pytest
import torch

from itnet_ext import data as D

# --------------------------------------------------------------------------------------
# writers of the tiny benchmark files
# --------------------------------------------------------------------------------------


def _img(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image_folder(root, classes=("cat", "dog"), per_class=2, size=(10, 12), seed=0):
    """root/<class>/<k>.png RGB images; returns {path: uint8 array}."""
    from PIL import Image

    rng, out = np.random.default_rng(seed), {}
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for k in range(per_class):
            a = _img(rng, *size)
            p = os.path.join(root, c, f"{k}.png")
            Image.fromarray(a).save(p)
            out[p] = a
    return out


CUBE_V = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
CUBE_F = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
TETRA_V = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TETRA_F = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def off_text(verts, faces, joined_header=False):
    head = f"OFF{len(verts)} {len(faces)} 0\n" if joined_header else \
        f"OFF\n# a comment\n{len(verts)} {len(faces)} 0\n"
    return head + "".join(" ".join(map(str, v)) + "\n" for v in verts) + \
        "".join(f"{len(f)} " + " ".join(map(str, f)) + "\n" for f in faces)


def write_modelnet_off(root, per_split=2):
    for name, (v, f) in {"cube": (CUBE_V, CUBE_F), "tetra": (TETRA_V, TETRA_F)}.items():
        for split in ("train", "test"):
            d = os.path.join(root, name, split)
            os.makedirs(d, exist_ok=True)
            for k in range(per_split):
                with open(os.path.join(d, f"{name}_{k:04d}.off"), "w") as fh:
                    fh.write(off_text(v, f, joined_header=k % 2 == 1))


def write_modelnet_hdf5(root, n=(5, 3), points=64, classes=4, seed=0):
    """ply_data_train0.h5, ply_data_train1.h5 (train), ply_data_test0.h5, listed as shipped."""
    import h5py

    rng, out = np.random.default_rng(seed), {}
    os.makedirs(root, exist_ok=True)
    for split, counts in (("train", n), ("test", (n[-1],))):
        names = []
        for j, m in enumerate(counts):
            d = rng.normal(size=(m, points, 3)).astype(np.float32)
            lab = rng.integers(0, classes, (m, 1)).astype(np.uint8)
            name = f"ply_data_{split}{j}.h5"
            with h5py.File(os.path.join(root, name), "w") as h:
                h["data"], h["label"] = d, lab
            names.append(f"data/modelnet40_ply_hdf5_2048/{name}")
            out.setdefault(split, []).append((d, lab))
        with open(os.path.join(root, f"{split}_files.txt"), "w") as fh:
            fh.write("\n".join(names) + "\n")
    return out


def write_tsv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join("\t".join(map(str, r)) + "\n" for r in rows))


SST2 = [("a great movie", 1), ("terrible , boring film", 0), ("great fun", 1),
        ("boring and bad", 0), ("a fun film", 1), ("bad movie", 0)]


def write_glue(root):
    write_tsv(f"{root}/CoLA/train.tsv", [("gj04", 1, "", "The book was read ."),
                                         ("gj04", 0, "*", "Book the read was .")])
    write_tsv(f"{root}/CoLA/test.tsv", [("index", "sentence"), (0, "John left .")])
    write_tsv(f"{root}/SST-2/train.tsv", [("sentence", "label")] + SST2)
    write_tsv(f"{root}/SST-2/dev.tsv", [("sentence", "label")] + SST2[:4])
    write_tsv(f"{root}/SST-2/test.tsv", [("index", "sentence"), (0, "great film")])
    mrpc = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    write_tsv(f"{root}/MRPC/train.tsv", [mrpc, (1, 11, 12, "He said hi .", "He greeted us ."),
                                         (0, 13, 14, "It rains .", "The sun is out .")])
    head = ("index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1",
            "sentence2", "label1")
    write_tsv(f"{root}/MNLI/train.tsv", [head + ("gold_label",),
                                         (0, 1, "1e", "fic", "", "", "", "", "A man sleeps .",
                                          "A person rests .", "entailment", "entailment"),
                                         (1, 2, "2c", "fic", "", "", "", "", "A dog runs .",
                                          "No dog moves .", "contradiction", "contradiction")])
    dev_head = head + ("label2", "label3", "label4", "label5", "gold_label")
    for split, lab in (("dev_matched", "neutral"), ("dev_mismatched", "entailment")):
        write_tsv(f"{root}/MNLI/{split}.tsv", [dev_head, (0, 3, "3n", "gov", "", "", "", "",
                                                          "Cats eat .", "Cats are hungry .",
                                                          lab, lab, lab, lab, lab, lab)])
    sts = ("index", "genre", "filename", "year", "old_index", "source1", "source2",
           "sentence1", "sentence2", "score")
    write_tsv(f"{root}/STS-B/train.tsv", [sts, (0, "main", "f", "2012", 1, "none", "none",
                                                "A plane takes off .", "An air plane is taking off .",
                                                "5.000"),
                                          (1, "main", "f", "2012", 4, "none", "none",
                                           "A cat plays .", "A man cooks .", "0.250")])
    write_tsv(f"{root}/STS-B/test.tsv", [sts[:-1], (0, "main", "f", "2012", 1, "none", "none",
                                                    "A man sings .", "A man is singing .")])


VQA_COUNTS = [{"yes": 10}, {"no": 2, "yes": 8}, {"2": 1, "two": 4, "3": 5}, {"red": 3, "blue": 7}]


def write_vqa(root, split="train2014", size=20, counts=VQA_COUNTS, seed=0):
    """questions / annotations JSON plus COCO-named images under root/<split>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    qs, anns = [], []
    os.makedirs(os.path.join(root, split), exist_ok=True)
    questions = ["Is it sunny?", "Is this a cat?", "How many dogs are there?", "What color is it?"]
    for k, c in enumerate(counts):
        image_id, qid = 100 + k, (100 + k) * 1000
        qs.append({"image_id": image_id, "question": questions[k % 4], "question_id": qid})
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                   for j, a in enumerate(a for a, n in c.items() for _ in range(n))]
        mc = max(c, key=c.get)
        anns.append({"question_id": qid, "image_id": image_id, "answers": answers,
                     "multiple_choice_answer": mc, "question_type": "x", "answer_type": "y"})
        Image.fromarray(_img(rng, size, size + 4)).save(
            os.path.join(root, split, f"COCO_{split}_{image_id:012d}.jpg"))
    qf = os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json")
    af = os.path.join(root, f"v2_mscoco_{split}_annotations.json")
    with open(qf, "w") as f:
        json.dump({"questions": qs, "task_type": "Open-Ended"}, f)
    with open(af, "w") as f:
        json.dump({"annotations": anns}, f)
    return qf, af, os.path.join(root, split)


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------


def test_image_folder_classes_labels_and_pixels(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    arrays = write_image_folder(tmp_path, classes=("zebra", "ant", "cat"))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    gray = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(gray, mode="L").save(tmp_path / "cat" / "9_gray.PNG")
    ds = D.ImageFolder(tmp_path)
    assert ds.classes == ["ant", "cat", "zebra"]
    assert ds.class_to_idx == {"ant": 0, "cat": 1, "zebra": 2}
    assert [t for _, t in ds.samples] == [0, 0, 1, 1, 1, 2, 2]
    assert len(ds) == 7
    for i, (path, target) in enumerate(ds.samples):
        x, y = ds[i]
        assert y == target and x.shape == (3, 10, 12) and x.dtype == torch.float32
        want = arrays[path] if path in arrays else np.repeat(gray[..., None], 3, -1)
        assert torch.equal((x * 255).round().to(torch.uint8).permute(1, 2, 0),
                           torch.from_numpy(want))


def test_transforms():
    x = torch.arange(3 * 6 * 8, dtype=torch.float32).view(3, 6, 8)
    assert torch.equal(D.center_crop(x, 4), x[:, 1:5, 2:6])
    assert torch.equal(D.center_crop(x, (2, 3)), x[:, 2:4, 2:5])
    assert D.resize(x, 3).shape == (3, 3, 4)                      # shorter side 6 -> 3
    assert D.resize(x, (5, 7)).shape == (3, 5, 7)
    const = torch.full((3, 9, 13), 0.25)
    torch.testing.assert_close(D.resize(const, 4), torch.full((3, 4, 6), 0.25))
    n = D.normalize(torch.ones(3, 2, 2), (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    assert n[:, 0, 0].tolist() == [1.0, 3.0, 0.5]
    ev = D.EvalTransform(8)
    assert ev.resize_size == 9 and ev(torch.rand(3, 20, 30)).shape == (3, 8, 8)
    img = torch.rand(3, 20, 30)
    a = D.TrainTransform(8, generator=torch.Generator().manual_seed(1))(img)
    b = D.TrainTransform(8, generator=torch.Generator().manual_seed(1))(img)
    assert a.shape == (3, 8, 8) and torch.equal(a, b)


def test_image_list_val_layout(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    a = np.zeros((4, 4, 3), np.uint8)
    a[..., 1] = 200
    for name in ("v1.png", "v2.png"):
        Image.fromarray(a).save(tmp_path / name)
    (tmp_path / "labels.txt").write_text("v1.png n02\nv2.png 0\n\n")
    ds = D.ImageList(tmp_path, tmp_path / "labels.txt", {"n01": 0, "n02": 1})
    assert ds.targets == [1, 0] and ds.classes == ["n01", "n02"]
    x, y = ds[0]
    assert y == 1 and x[1].eq(200 / 255).all() and x[0].eq(0).all()
    (tmp_path / "bad.txt").write_text("v1.png n09\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: label 'n09'"):
        D.ImageList(tmp_path, tmp_path / "bad.txt", {"n01": 0})


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder root: no such directory .*missing"):
        D.ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="expected one sub-folder per class"):
        D.ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("")
    with pytest.raises(ValueError, match="no image files with extensions"):
        D.ImageFolder(tmp_path)


# --------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------


def test_glue_columns_and_labels(tmp_path):
    write_glue(tmp_path)
    cola = D.read_glue_tsv(tmp_path / "CoLA" / "train.tsv", "CoLA")
    assert cola == [("The book was read .", None, 1), ("Book the read was .", None, 0)]
    assert D.read_glue_tsv(tmp_path / "CoLA" / "test.tsv", "cola") == [("John left .", None, None)]
    sst = D.read_glue_tsv(tmp_path / "SST-2" / "train.tsv", "sst-2")
    assert [(e.a, e.label) for e in sst] == SST2
    assert D.read_glue_tsv(tmp_path / "SST-2" / "test.tsv", "SST2") == [("great film", None, None)]
    mrpc = D.read_glue_tsv(tmp_path / "MRPC" / "train.tsv", "mrpc")
    assert mrpc[0] == ("He said hi .", "He greeted us .", 1) and mrpc[1].label == 0
    mnli = D.read_glue_tsv(tmp_path / "MNLI" / "train.tsv", "mnli")
    assert [e.label for e in mnli] == [1, 0] and mnli[1].b == "No dog moves ."
    assert D.read_glue_tsv(tmp_path / "MNLI" / "dev_matched.tsv", "mnli")[0].label == 2
    assert D.read_glue_tsv(tmp_path / "MNLI" / "dev_mismatched.tsv", "mnli")[0].label == 1
    sts = D.read_glue_tsv(tmp_path / "STS-B" / "train.tsv", "sts-b")
    assert [e.label for e in sts] == [5.0, 0.25] and sts[1].b == "A man cooks ."
    assert D.glue_task("STS_B").is_regression and D.glue_task("mnli").num_outputs == 3


def test_glue_dataset_encoding(tmp_path):
    write_glue(tmp_path)
    ds = D.GlueDataset(tmp_path, "mrpc", "train", max_len=16)
    tok = ds.tokenizer
    ids, mask, label = ds[0]
    a, b = tok.tokenize("He said hi ."), tok.tokenize("He greeted us .")
    want = [tok.CLS] + a + [tok.SEP] + b + [tok.SEP]
    assert ids.tolist() == want + [tok.PAD] * (16 - len(want))
    assert mask.tolist() == [False] * len(want) + [True] * (16 - len(want))
    assert label.dtype == torch.long and int(label) == 1
    assert tok.decode(ids) == "he said hi . he greeted us ."
    short = D.GlueDataset(tmp_path / "MRPC", "mrpc", "train", tokenizer=tok, max_len=7)
    ids, mask, _ = short[0]          # 4 + 4 words cut longest-first to 2 + 2
    assert ids.tolist() == [tok.CLS] + a[:2] + [tok.SEP] + b[:2] + [tok.SEP] and not mask.any()
    sts = D.GlueDataset(tmp_path, "stsb", "test")
    assert sts[0][2].dtype == torch.float32 and math.isnan(float(sts[0][2]))
    sst_test = D.GlueDataset(tmp_path, "sst2", "test")
    assert int(sst_test[0][2]) == -1
    dev = D.GlueDataset(tmp_path, "mnli", "dev_mismatched", max_len=12)
    assert int(dev[0][2]) == 1
    batch = D.glue_collate([ds[0], ds[1]])
    n0, n1 = int((~ds[0][1]).sum()), int((~ds[1][1]).sum())
    assert batch[0].shape == (2, max(n0, n1)) and batch[2].tolist() == [1, 0]


def test_tokenizer_round_trip_and_byte_fallback():
    tok = D.WordTokenizer.from_texts(["the cat sat", "the dog"], max_size=3)
    assert tok.words == ["the", "cat", "sat"] and len(tok) == 4 + 512 + 3
    text = "The cat chased a Déjà-vu, naïvely!"
    ids = tok.tokenize(text)
    assert tok.UNK not in ids
    assert tok.decode(ids) == " ".join(tok.split(text)) == "the cat chased a déjà - vu , naïvely !"
    assert tok.tokenize("the") == [4 + 512]
    strict = D.WordTokenizer(tok.words, byte_fallback=False)
    assert strict.tokenize("the zebra") == [4 + 512, strict.UNK]
    ids, mask = tok.encode("the cat", max_len=6)
    assert ids.tolist() == [2, 516, 517, 3, 0, 0] and mask.tolist() == [False] * 4 + [True] * 2
    with pytest.raises(ValueError, match="max_len must be at least 4"):
        tok.encode("a", "b", max_len=3)


def test_glue_errors(tmp_path):
    write_glue(tmp_path)
    with pytest.raises(ValueError, match=r"GLUE task 'imdb': expected one of \['cola'"):
        D.glue_task("imdb")
    write_tsv(f"{tmp_path}/SST-2/bad.tsv", [("sentence", "label"), ("fine", 1), ("no label",)])
    with pytest.raises(ValueError, match=r"bad.tsv:3: malformed SST-2 row: expected at least 2"):
        D.read_glue_tsv(tmp_path / "SST-2" / "bad.tsv", "sst2")
    write_tsv(f"{tmp_path}/SST-2/bad2.tsv", [("sentence", "label"), ("fine", "positive")])
    with pytest.raises(ValueError, match=r"bad2.tsv:2: SST-2 label 'positive': expected one of"):
        D.read_glue_tsv(tmp_path / "SST-2" / "bad2.tsv", "sst2")
    write_tsv(f"{tmp_path}/MRPC/bad.tsv", [("Quality", "#1 String"), (1, "x")])
    with pytest.raises(ValueError, match=r"lacks the MRPC column\(s\) \['#2 String'\]"):
        D.read_glue_tsv(tmp_path / "MRPC" / "bad.tsv", "mrpc")
    with pytest.raises(FileNotFoundError, match="GLUE RTE: no such file .*train.tsv"):
        D.read_glue_tsv(tmp_path / "RTE" / "train.tsv", "rte")
    with pytest.raises(ValueError, match=r"split 'dev': expected one of \['train', 'dev_matched'"):
        D.GlueDataset(tmp_path, "mnli", "dev")
    with pytest.raises(FileNotFoundError, match="GLUE QQP root: no such directory"):
        D.GlueDataset(tmp_path / "nowhere", "qqp")


# --------------------------------------------------------------------------------------
# ModelNet
# --------------------------------------------------------------------------------------


def _surface_distance(points, verts, tris):
    """Per point, the distance to the plane of a triangle that contains its projection
    (inf when none does)."""
    p = points.double()
    v = torch.tensor(verts, dtype=torch.float64)
    t = torch.as_tensor(tris)
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    n = torch.linalg.cross(b - a, c - a)
    n = n / n.norm(dim=1, keepdim=True)
    d = p[:, None] - a[None]                                       # (P, F, 3)
    h = (d * n).sum(-1)
    q = d - h[..., None] * n                                      # projection, relative to a
    e1, e2 = (b - a)[None], (c - a)[None]
    d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    q1, q2 = (q * e1).sum(-1), (q * e2).sum(-1)
    den = d11 * d22 - d12 ** 2
    s, r = (d22 * q1 - d12 * q2) / den, (d11 * q2 - d12 * q1) / den
    inside = (s >= -1e-6) & (r >= -1e-6) & (s + r <= 1 + 1e-6)
    return torch.where(inside, h.abs(), torch.full_like(h, math.inf)).min(1).values


@pytest.mark.parametrize("joined", [False, True])
def test_read_off_and_points_on_surface(tmp_path, joined):
    path = tmp_path / "cube.off"
    path.write_text(off_text(CUBE_V, CUBE_F, joined_header=joined))
    v, f = D.read_off(path)
    assert v.shape == (8, 3) and f.shape == (12, 3) and np.array_equal(v, np.array(CUBE_V, float))
    pts = D.sample_surface(v, f, 500, torch.Generator().manual_seed(0))
    assert pts.shape == (500, 3) and pts.dtype == torch.float32
    assert _surface_distance(pts, CUBE_V, f).max() < 1e-6
    assert (pts.abs().max(1).values - 1).abs().max() < 1e-6       # the cube's faces: |coord| = 1
    tv, tf = np.array(TETRA_V, float), np.array(TETRA_F)
    tp = D.sample_surface(tv, tf, 300, torch.Generator().manual_seed(1))
    assert _surface_distance(tp, TETRA_V, tf).max() < 1e-6


def test_sampling_is_area_weighted_and_uniform():
    verts = [(0, 0, 0), (3, 0, 0), (0, 3, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1)]
    faces = np.array([(0, 1, 2), (3, 4, 5)])                     # areas 4.5 and 0.5
    n = 20000
    pts = D.sample_surface(np.array(verts, float), faces, n, torch.Generator().manual_seed(2))
    big = pts[:, 2].abs() < 1e-6
    assert bool((big | (pts[:, 2] - 1).abs().lt(1e-6)).all())
    frac, sigma = big.double().mean().item(), math.sqrt(0.9 * 0.1 / n)
    assert abs(frac - 0.9) < 5 * sigma
    centroid = pts[big, :2].double().mean(0)                      # uniform in the triangle
    torch.testing.assert_close(centroid, torch.tensor([1.0, 1.0], dtype=torch.float64), atol=0.03,
                               rtol=0)
    again = D.sample_surface(np.array(verts, float), faces, n, torch.Generator().manual_seed(2))
    assert torch.equal(pts, again)


def test_modelnet_off_dataset(tmp_path):
    write_modelnet_off(tmp_path)
    ds = D.ModelNetOFF(tmp_path, "train", num_points=128, seed=3)
    assert ds.classes == ["cube", "tetra"] and len(ds) == 4 and [t for _, t in ds.samples] == [0, 0, 1, 1]
    p, y = ds[0]
    assert p.shape == (128, 3) and y == 0
    torch.testing.assert_close(p.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert abs(float(p.norm(dim=1).max()) - 1) < 1e-6
    assert torch.equal(ds[0][0], D.ModelNetOFF(tmp_path, "train", 128, seed=3)[0][0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], p)
    assert D.ModelNetOFF(tmp_path, "test", 8)[3][1] == 1
    u = D.normalize_unit_sphere(torch.tensor([[0.0, 0, 0], [4, 0, 0], [2, 2, 0]]))
    torch.testing.assert_close(u, torch.tensor([[-2.0, -2 / 3, 0], [2, -2 / 3, 0], [0, 4 / 3, 0]]) /
                               math.sqrt(4 + 4 / 9))


def test_malformed_off(tmp_path):
    bad = {"x.off": "PLY\n3 1 0\n", "counts.off": "OFF\nthree one zero\n",
           "short.off": "OFF\n3 1 0\n0 0 0\n1 0 0\n",
           "index.off": "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n",
           "face.off": "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=r"x.off: not an OFF file, expected a first line 'OFF'"):
        D.read_off(tmp_path / "x.off")
    with pytest.raises(ValueError, match=r"counts.off: expected '<#vertices> <#faces> <#edges>'"):
        D.read_off(tmp_path / "counts.off")
    with pytest.raises(ValueError, match="short.off: header promises 3 vertices and 1 faces"):
        D.read_off(tmp_path / "short.off")
    with pytest.raises(ValueError, match=r"index.off: face 0 .*indices in \[0, 3\)"):
        D.read_off(tmp_path / "index.off")
    with pytest.raises(ValueError, match=r"face.off: face 0 .*n >= 3"):
        D.read_off(tmp_path / "face.off")
    with pytest.raises(FileNotFoundError, match="OFF file: no such file"):
        D.read_off(tmp_path / "none.off")
    with pytest.raises(ValueError, match="no .off files in <class>/train/"):
        (tmp_path / "chair").mkdir()
        D.ModelNetOFF(tmp_path)


def test_modelnet_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    written = write_modelnet_hdf5(tmp_path)
    ds = D.ModelNetHDF5(tmp_path, "train")
    data = np.concatenate([d for d, _ in written["train"]])
    labels = np.concatenate([lab for _, lab in written["train"]])[:, 0]
    assert len(ds) == 8
    for i in (0, 4, 7):
        p, y = ds[i]
        assert torch.equal(p, torch.from_numpy(data[i])) and y == int(labels[i])
    crop = D.ModelNetHDF5(tmp_path, "test", num_points=10, normalize=True)
    assert len(crop) == 3 and crop[0][0].shape == (10, 3)
    assert abs(float(crop[0][0].norm(dim=1).max()) - 1) < 1e-6
    with pytest.raises(ValueError, match=r"num_points must be in \[1, 64\]"):
        D.ModelNetHDF5(tmp_path, "train", num_points=65)
    with h5py.File(tmp_path / "ply_data_train1.h5", "w") as h:
        h["points"] = np.zeros((2, 64, 3), np.float32)
    with pytest.raises(ValueError, match=r"ply_data_train1.h5: expected datasets 'data'"):
        D.ModelNetHDF5(tmp_path, "train")
    os.remove(tmp_path / "test_files.txt")
    with pytest.raises(FileNotFoundError, match="no file list .*test_files.txt"):
        D.ModelNetHDF5(tmp_path, "test")


# --------------------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------------------


def test_vqa_soft_scores_and_vocabulary(tmp_path):
    pytest.importorskip("PIL")
    qf, af, img = write_vqa(tmp_path)
    entries = D.load_vqa(qf, af)
    assert [e["multiple_choice_answer"] for e in entries] == ["yes", "yes", "3", "blue"]
    assert D.answer_vocabulary(entries) == ["yes", "3", "blue"]
    assert D.answer_vocabulary(entries, top_k=1) == ["yes"]
    vocab = {a: i for i, a in enumerate(["yes", "no", "two", "3", "2", "red", "blue"])}
    s = D.soft_scores(entries[1]["answers"], vocab)
    torch.testing.assert_close(s, torch.tensor([1.0, 2 / 3, 0, 0, 0, 0, 0]))   # no: 2 of 10
    s = D.soft_scores(entries[2]["answers"], vocab)
    torch.testing.assert_close(s, torch.tensor([0, 0, 1.0, 1.0, 1 / 3, 0, 0]))
    assert D.soft_scores(["Red.", " RED", "red"], vocab)[5] == 1.0
    assert D.coco_image_path("/coco", "val2014", 42) == "/coco/COCO_val2014_000000000042.jpg"

    ds = D.VQADataset(qf, af, img, answers=["yes", "no", "two", "red"], image_size=16)
    assert len(ds) == 4 and os.path.isfile(ds.image_path(3))
    image, ids, target = ds[2]
    assert image.shape == (3, 16, 16) and ids.dtype == torch.long
    assert ds.tokenizer.decode(ids) == "how many dogs are there ?"
    torch.testing.assert_close(target, torch.tensor([0, 0, 1.0, 0]))      # "two" x4: min(1, 4/3)
    torch.testing.assert_close(ds[3][2], torch.tensor([0, 0, 0, 1.0]))
    images, tokens, targets = D.vqa_collate([ds[0], ds[2]])
    n0 = ds[0][1].numel()
    assert tokens.shape == (2, 6) and tokens[0, n0:].eq(0).all() and targets.shape == (2, 4)
    kept = D.VQADataset(qf, af, img, answers=["red", "blue"], drop_unanswerable=True, max_len=2)
    assert len(kept) == 1 and kept[0][1].numel() == 2


def test_vqa_errors(tmp_path):
    pytest.importorskip("PIL")
    qf, af, img = write_vqa(tmp_path)
    with pytest.raises(FileNotFoundError, match="VQA annotations file: no such file"):
        D.load_vqa(qf, tmp_path / "none.json")
    (tmp_path / "q.json").write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match=r"q.json: expected a JSON object with a 'questions' list"):
        D.load_vqa(tmp_path / "q.json")
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 7, "image_id": 1, "answers": []}]}))
    with pytest.raises(ValueError, match="annotation 0 has question_id 7, which is not in"):
        D.load_vqa(qf, tmp_path / "a.json")
    ds = D.VQADataset(qf, af, img, image_size=8)
    os.remove(ds.image_path(0))
    with pytest.raises(FileNotFoundError, match=r"VQA question 100000: image .*COCO_train2014_000000000100.jpg"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="VQA image_root: no such directory"):
        D.VQADataset(qf, af, tmp_path / "nowhere")
