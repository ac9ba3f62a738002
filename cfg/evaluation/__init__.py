"""Evaluation: the FID InceptionV3 (inception), FID / IS / precision-recall (metrics), ADM-format
sample and reference batches (adm_io), and a Fashion-MNIST feature network (feature_net).

Modules are imported one by one (`from cfg.evaluation import metrics`); this package file imports
nothing, so numpy-only parts (`synthetic_weights`) and the torch-only converter load without JAX.
"""
