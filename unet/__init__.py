"""The Stable Diffusion v1 U-Net, written out module by module, with the editor extension point.

    from unet import UNet, UNetConfig, Editor
    eps = UNet(UNetConfig.sd_v1())(x, t, context, editor=None)
"""
from .attention import Attention, BasicTransformerBlock, FeedForward, GEGLU, SpatialTransformer
from .blocks import DownBlock, MidBlock, UpBlock
from .config import UNetConfig
from .editor import Editor, Record, RecordingEditor, Site
from .embeddings import timestep_embedding
from .model import TimeEmbedding, UNet
from .resnet import Downsample, ResBlock, Upsample

__all__ = [
    "Attention", "BasicTransformerBlock", "DownBlock", "Downsample", "Editor", "FeedForward", "GEGLU",
    "MidBlock", "Record", "RecordingEditor", "ResBlock", "Site", "SpatialTransformer", "TimeEmbedding",
    "UNet", "UNetConfig", "UpBlock", "Upsample", "timestep_embedding",
]
