"""The latent space of a trained model.

=====================  ===========================================================================================
module                 what it holds
=====================  ===========================================================================================
``table``              the columns of a cohort table (``mu_1..mu_d``, ``sigma_1..sigma_d``), its checks, group order
``cohort``             ``encode_cohort``: a cohort's codes and clinical measures, cached on disk; ``cvae embed``
``codes``              decode, ``sample``, ``walk``, ``transport``, ``uncertainty``
``priors``             ``CodePrior``: N(0, I) or a cohort's aggregate posterior, to draw codes from
``measures``           volumes and ejection fractions of a simulated ES (ED labels carried by a deformation)
``refine``             MAP refinement of a pair's code (a few gradient steps on the pair's objective)
``standardise``        fold a cohort's code mean and spread into the weights; ``cvae standardise``
``transport_study``    every group's motion on every group's anatomy (the paper's transport claim)
``analysis``           CCA / UMAP / PCA projections and the leak-free SVM classification (scikit-learn)
=====================  ===========================================================================================

The everyday operations are importable from here (``from cvae.latent import encode_cohort, sample``); the
projections and classification from :mod:`cvae.latent.analysis` (it imports scikit-learn).
"""
from __future__ import annotations

from cvae.latent.codes import as_image, cohort_prior, decode_codes, prior_codes, sample, transport, uncertainty, walk
from cvae.latent.cohort import cached_table_path, encode_cohort
from cvae.latent.measures import WARPED_MEASURES, simulated_es_measures, warped_label_measures
from cvae.latent.priors import CodePrior
from cvae.latent.table import check_table, group_order, latent_dim_of, mu_columns, sigma_columns, subject_index

__all__ = ["as_image", "cohort_prior", "decode_codes", "prior_codes", "sample", "transport", "uncertainty", "walk",
           "cached_table_path", "encode_cohort", "WARPED_MEASURES", "simulated_es_measures", "warped_label_measures",
           "CodePrior", "check_table", "group_order", "latent_dim_of", "mu_columns", "sigma_columns", "subject_index"]
