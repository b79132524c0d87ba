"""Network architectures written in geoseg (not segmentation-models-pytorch): one module per
architecture."""
