"""The toy world: 64x64 images of simple shapes with captions, an analyzer that reads them back,
and a tiny Stable Diffusion trained on them (see toyworld/train.py and weights/toy/)."""
