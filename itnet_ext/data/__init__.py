"""Loaders for the paper's benchmark formats, on their usual on-disk layouts (no downloads,
no torchvision):

- :mod:`~itnet_ext.data.images`: ImageFolder / ImageNet (``root/<class>/<image>``, and the
  ImageNet validation layout of flat images plus a label file); resize, center crop and
  normalize written with torch.
- :mod:`~itnet_ext.data.glue`: the GLUE TSV files of CoLA, SST-2, MRPC, QQP, STS-B, MNLI,
  QNLI, RTE, WNLI, and a word-level tokenizer built from the training file.
- :mod:`~itnet_ext.data.modelnet`: ModelNet40 as OFF meshes (area-weighted surface sampling)
  or as the ``modelnet40_ply_hdf5_2048`` HDF5 files.
- :mod:`~itnet_ext.data.vqa`: VQAv2 question / annotation JSON, top-K answer vocabulary and
  soft scores, COCO image names.

Every loader is a :class:`torch.utils.data.Dataset`; the variable-length ones have a
``collate``. Only torch, numpy and the standard library are imported here; PIL and h5py are
imported where they are needed.
"""
from .glue import (GLUE_TASKS, GlueDataset, GlueExample, GlueTask, WordTokenizer, glue_collate,
                   glue_task, read_glue_tsv)
from .images import (IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, EvalTransform, ImageFolder,
                     ImageList, TrainTransform, center_crop, eval_transform, find_classes,
                     load_rgb, normalize, resize, to_tensor)
from .modelnet import ModelNetHDF5, ModelNetOFF, normalize_unit_sphere, read_off, sample_surface
from .vqa import (VQADataset, answer_vocabulary, coco_image_path, load_vqa, normalize_answer,
                  soft_scores, vqa_collate)

__all__ = ["GLUE_TASKS", "GlueDataset", "GlueExample", "GlueTask", "WordTokenizer", "glue_collate",
           "glue_task", "read_glue_tsv",
           "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "ImageFolder",
           "ImageList", "TrainTransform", "center_crop", "eval_transform", "find_classes",
           "load_rgb", "normalize", "resize", "to_tensor",
           "ModelNetHDF5", "ModelNetOFF", "normalize_unit_sphere", "read_off", "sample_surface",
           "VQADataset", "answer_vocabulary", "coco_image_path", "load_vqa", "normalize_answer",
           "soft_scores", "vqa_collate"]
