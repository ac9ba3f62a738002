"""Evaluation: the FID InceptionV3 (inception) and DINOv2 ViT-L/14 (dinov2) ports, FID / IS / P/R / PRDC,
bootstrap intervals and FD∞ (metrics), ADM-format sample and reference batches (adm_io), and a
Fashion-MNIST feature network (feature_net).

Modules are imported one by one (`from cfg.evaluation import metrics`); this package file imports
nothing, so numpy-only parts (`synthetic_weights`, `torch_resize`, `torch_weights`) and the torch-only
converters load without JAX.
"""
