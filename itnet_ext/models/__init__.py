"""ITNet as a model: one shared operator configuration, light modality encoders, blocks
whose evaluation method (dense, sampled, neighbors, lowrank, scan) is chosen per layer.

    enc = PatchEncoder(image_size=8, patch_size=2, in_channels=1, embed_dim=64)
    net = ITNet(enc, OperatorConfig(64, num_heads=4, kernel_hidden=16), depth=4, num_outputs=10)
    logits = net(images)
"""
from .block import ITNetBlock, make_mixer
from .config import METHODS, OperatorConfig
from .encoders import PatchEncoder, PointEncoder, TokenEncoder, Tokens, VisionLanguageEncoder
from .itnet import ITNet, PairClassifier
from .scan_mixer import ScanMixer

__all__ = ["ITNet", "ITNetBlock", "OperatorConfig", "METHODS", "PairClassifier", "ScanMixer",
           "Tokens", "PatchEncoder", "TokenEncoder", "PointEncoder", "VisionLanguageEncoder",
           "make_mixer"]
