"""Quantitative checks of the paper's latent-space claims on a cohort; prints a Markdown section for RESULTS.md.

1. **Clustering**: 5-class disease classification from the codes ``mu`` (CCA + SVM, stratified k-fold), leak-free
   (CCA fitted inside each training fold) beside the paper's leaky protocol, with a permutation test.
2. **Transport**: the codes of source subjects decode deformations of target subjects' ED images; the target's ED
   labels warped by them give a simulated ES and its LVEF. Claim: DCM codes on NOR hearts give LVEF < 40 %, NOR
   codes on NOR hearts keep LVEF > 50 %. Mean LVEF per (source group -> target group) pair.
3. **Sampling**: deformations of each target's ED image drawn from the prior N(0, I), and from the Gaussian fit of
   the aggregate posterior of the *training* split's codes (:func:`cvae.latent.cohort_prior`): folding (negative
   Jacobians) and LVEF compared with the cohort's range.
4. With ``--refine-steps N``: the transport sources' codes MAP-refined on their own pairs (:mod:`cvae.latent.refine`):
   own-pair Dice, LCC and LVEF error before and after, and the transport claims with the refined codes.

Usage (the shipped checkpoint on the synthetic test cohort)::

    .venv/bin/python benchmarks/latent_claims.py --data data/synthetic-acdc --checkpoint synthetic-acdc

Subjects are the first ``--sources-per-group`` / ``--targets-per-group`` of each group (by subject id) that have
labels; self pairs are left out of the transport tables and reported apart, as a calibration (how well each
target's own code reproduces its true LVEF).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import pandas as pd
import torch
from scipy.stats import wilcoxon

from cvae.checkpoint import load_checkpoint, resolve_checkpoint
from cvae.data.dataset import PairDataset
from cvae.data.grid import DEFAULT_SPACING
from cvae.latent import (cohort_prior, encode_cohort, group_order, latent_dim_of, prior_codes, subject_index,
                         warped_label_measures)
from cvae.latent.analysis import ClassificationReport, classify
from cvae.latent.priors import CodePrior
from cvae.latent.refine import DEFAULT_LR, refine_table, score_codes
from cvae.latent.transport_study import (claim_lvefs, cohort_transport, fraction, group_matrix, markdown_matrix, pick,
                                         transport_pairs)

from report import print_report, report_parser  # benchmarks/ is on sys.path when run as a script


def sample_table(model, dataset: PairDataset, targets: pd.DataFrame, n: int, temperature: float, seed: int,
                 chunk: int, prior: CodePrior | None = None) -> pd.DataFrame:
    """``n`` samples of ``prior`` (default N(0, I)) per target: the simulated ES measures of each, with the target's
    group."""
    index = subject_index(dataset, targets)
    rows = []
    for k, (_, target) in enumerate(targets.iterrows()):
        pair = dataset.pair(index[target["subject"]])
        z = prior_codes(model, n, temperature, seed + k, prior)
        measures = warped_label_measures(model, z, pair.moving, pair.moving_label, pair.spacing, chunk)
        measures.insert(0, "target", target["subject"])
        measures.insert(1, "target_group", target["group"])
        rows.append(measures)
    return pd.concat(rows, ignore_index=True)


def report(args: argparse.Namespace, config: dict, table: pd.DataFrame, clf: ClassificationReport,
           transports: pd.DataFrame, samples: dict[str, pd.DataFrame], seconds: float) -> str:
    """The Markdown section."""
    groups = group_order(table["group"])
    command = "python benchmarks/latent_claims.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["## Latent space: clustering, transport and sampling (`benchmarks/latent_claims.py`)", "",
             f"Command: `{command}`  ", f"Checkpoint `{args.checkpoint}` ({latent_dim_of(table)}-D latent, image "
             f"{tuple(config['model']['image_size'])}); cohort `{args.data}` split `{args.split}`, "
             f"{len(table)} subjects; total {seconds:.0f} s on {args.device_name}.", ""]

    lines += ["### Disease classification from the codes", "", clf.to_markdown(),
              "Paper: 70 % (2018, 16-D), 83 % (2019, 32-D), both with CCA fitted on all test codes.", ""]

    cohort_lvef = table.groupby("group")["LVEF"].agg(["mean", "min", "max"]).reindex(groups)
    own = transports[transports["source"] == transports["target"]]
    transports = transports[transports["source"] != transports["target"]]
    lines += ["### Transport of deformation codes", "",
              f"Sources: {args.sources_per_group} subjects per group; targets: {args.targets_per_group} per group "
              f"({len(transports)} pairs, self pairs left out). Each source's `mu` decodes a deformation of the "
              "target's ED image; the target's ED labels warped by it (nearest) are the simulated ES.", "",
              "Mean LVEF (%) of the simulated ES, source group (rows) -> target group (columns):", ""]
    lines += markdown_matrix(group_matrix(transports, "LVEF"), ".1f")
    lines += ["", "Fraction of pairs with simulated LVEF < 40 %:", ""]
    lines += markdown_matrix(100 * group_matrix(transports, transports["LVEF"] < 40), ".0f")
    lines += ["", "Cohort LVEF (%, from the real ES labels) per group: " + ", ".join(
        f"{g} {row['mean']:.1f} ({row['min']:.0f}-{row['max']:.0f})" for g, row in cohort_lvef.iterrows()) + ".",
              "", f"Calibration, each target's own code (registration): simulated LVEF - true LVEF = "
              f"{(own['LVEF'] - own['target_LVEF']).mean():+.1f} % on average (mean absolute "
              f"{(own['LVEF'] - own['target_LVEF']).abs().mean():.1f} %, {len(own)} targets).", ""]
    lines += ["| claim | pairs passing |", "|---|---|"]
    lines += [f"| {text} | {fraction(*claim)} |" for text, claim in claim_lvefs(transports).items()]
    lines += [f"| transported deformations without folding | "
              f"{fraction(transports['negative_jacobian'], lambda v: v == 0)} |", ""]

    lo, hi = float(table["LVEF"].min()), float(table["LVEF"].max())
    n_samples = len(next(iter(samples.values())))
    lines += ["### Sampling", "",
              f"{args.samples} codes `z = mean + {args.temperature:g} * L eps`, `eps ~ N(0, I)`, `L L^T = cov`, per "
              f"target ({n_samples} deformations per prior): the model's prior N(0, I) (`mean = 0`, `L = I`) and "
              "the Gaussian with the mean and covariance of the aggregate posterior of the training split's codes "
              "(`cvae.latent.cohort_prior`; no test subject is used to fit it).", "",
              f"| prior | no negative Jacobian determinant | LVEF within the cohort's range {lo:.0f}-{hi:.0f} % | "
              "sampled LVEF (%), mean (range) | largest folding fraction |", "|---|---|---|---|---|"]
    for name, drawn in samples.items():
        lines.append(f"| {name} | {fraction(drawn['negative_jacobian'], lambda v: v == 0)} | "
                     f"{fraction(drawn['LVEF'], lambda v: (v >= lo) & (v <= hi))} | {drawn['LVEF'].mean():.1f} "
                     f"({drawn['LVEF'].min():.1f} to {drawn['LVEF'].max():.1f}) | "
                     f"{drawn['negative_jacobian'].max():.2g} |")
    lines.append("")
    return "\n".join(lines)


def refinement_report(args: argparse.Namespace, encoder: pd.DataFrame, refined: pd.DataFrame,
                      transports: dict[str, pd.DataFrame], seconds_per_pair: float) -> str:
    """The Markdown subsection on MAP-refined codes: ``encoder`` / ``refined`` are
    :func:`cvae.latent.refine.score_codes` tables (``refined`` with the LCC columns), ``transports`` the transport
    pairs with either kind of source code."""
    both = encoder.merge(refined, on=["subject", "group", "true_LVEF"], suffixes=("_mu", "_refined"))
    for kind in ("mu", "refined"):
        both[f"error_{kind}"] = both[f"LVEF_{kind}"] - both["true_LVEF"]
    lines = ["### MAP refinement of the codes", "",
             f"The transport sources' codes refined by {args.refine_steps} Adam steps of learning rate "
             f"{args.refine_lr} on their own pairs (`cvae.latent.refine`, {seconds_per_pair:.1f} s per pair). Own-pair "
             "registration, encoder's `mu` -> refined code:", "",
             "| group | pairs | LCC | mean Dice (%) | LVEF error (%) |", "|---|---|---|---|---|"]
    for group in [*both["group"].drop_duplicates(), "all"]:
        part = both if group == "all" else both[both["group"] == group]
        lines.append(f"| {group} | {len(part)} | {part['lcc_before'].mean():.4f} -> {part['lcc_after'].mean():.4f} | "
                     f"{part['dice_mu'].mean():.1f} -> {part['dice_refined'].mean():.1f} | "
                     f"{part['error_mu'].mean():+.1f} -> {part['error_refined'].mean():+.1f} |")
    gain, under = both["dice_refined"] - both["dice_mu"], both[both["error_mu"] < 0]
    test = wilcoxon(gain).pvalue if len(gain) > 1 and gain.abs().sum() > 0 else float("nan")
    lines += ["", f"Paired Dice change {gain.mean():+.2f} +- {gain.std():.2f} points, better in {int((gain > 0).sum())}"
              f" / {len(gain)} pairs (Wilcoxon p = {test:.2g}); mean absolute LVEF error "
              f"{both['error_mu'].abs().mean():.1f} -> {both['error_refined'].abs().mean():.1f} points. In the "
              f"{len(under)} pairs whose LVEF `mu` under-estimates, a median "
              f"{100 * under['basal_excess_mu'].median():.0f} % of the excess simulated ES cavity volume lies in "
              "slices with no LV cavity at ES (the base has descended out of them; "
              f"{100 * under['basal_excess_refined'].median():.0f} % with refined codes).", "",
              "| claim | encoder's codes | refined codes |", "|---|---|---|"]
    claims = {kind: claim_lvefs(pairs) for kind, pairs in transports.items()}
    for text in claims["encoder"]:
        cells = [f"{fraction(*claims[kind][text])}, mean {claims[kind][text][0].mean():.1f} %"
                 for kind in ("encoder", "refined")]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += ["", "Mean LVEF (%) of the simulated ES with refined source codes, source group (rows) -> target group "
              "(columns):", ""]
    lines += markdown_matrix(group_matrix(transports["refined"], "LVEF"), ".1f")
    lines.append("")
    return "\n".join(lines)


def claims_text(args: argparse.Namespace) -> str:
    """The Markdown of every check, for the options of :func:`main`."""
    start = time.perf_counter()
    model, config = load_checkpoint(args.checkpoint, args.device)
    args.device_name = str(model.device)
    table = encode_cohort(resolve_checkpoint(args.checkpoint), args.data, args.split, device=args.device)
    dataset = PairDataset(args.data, split=args.split, size=model.config.image_size,
                          spacing=config.get("spacing", DEFAULT_SPACING))
    targets = pick(table, args.targets_per_group)
    transports = cohort_transport(args.checkpoint, args.data, args.split,
                                  sources_per_group=args.sources_per_group,
                                  targets_per_group=args.targets_per_group, device=args.device, chunk=args.chunk)
    training = encode_cohort(resolve_checkpoint(args.checkpoint), args.data, "training", device=args.device)
    priors = {"N(0, I)": None, f"aggregate posterior ({len(training)} training codes)": cohort_prior(training)}
    with torch.no_grad():
        samples = {name: sample_table(model, dataset, targets, args.samples, args.temperature, args.seed,
                                      args.chunk, prior) for name, prior in priors.items()}
    clf = classify(table, folds=args.folds, permutations=args.permutations, seed=args.seed)
    if args.refine_steps:
        sources = pick(table, args.sources_per_group)
        began = time.perf_counter()
        refined = refine_table(model, dataset, sources, args.refine_steps, args.refine_lr)
        per_pair = (time.perf_counter() - began) / len(sources)
        scores = {"encoder": score_codes(model, dataset, sources),
                  "refined": score_codes(model, dataset, refined).merge(
                      refined[["subject", "lcc_before", "lcc_after"]], on="subject")}
        with torch.no_grad():
            refined_pairs = transport_pairs(model, dataset, refined, targets, args.chunk)
        extra = refinement_report(args, scores["encoder"], scores["refined"],
                                  {"encoder": transports, "refined": refined_pairs}, per_pair)
    text = report(args, config, table, clf, transports, samples, time.perf_counter() - start)
    if args.refine_steps:
        text += "\n" + extra
    return text


def main(argv: list[str] | None = None) -> int:
    parser = report_parser(__doc__.split("\n")[0])
    parser.add_argument("--sources-per-group", type=int, default=4, help="transport sources per group (default 4)")
    parser.add_argument("--targets-per-group", type=int, default=2, help="transport targets per group (default 2)")
    parser.add_argument("--samples", type=int, default=4, help="prior samples per target (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--folds", type=int, default=10, help="cross-validation folds (default 10)")
    parser.add_argument("--permutations", type=int, default=100, help="permutation-test shuffles (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of folds, permutations and samples (default 0)")
    parser.add_argument("--chunk", type=int, default=8, help="codes decoded per forward pass (default 8)")
    parser.add_argument("--refine-steps", type=int, default=0, help="also refine the transport sources' codes by N "
                        "gradient steps and report what changes (default 0: skip; about 0.5 s per step and pair)")
    parser.add_argument("--refine-lr", type=float, default=DEFAULT_LR,
                        help=f"learning rate of the refinement (default {DEFAULT_LR})")
    args = parser.parse_args(argv)
    return print_report("latent_claims", lambda: claims_text(args), args.out)

if __name__ == "__main__":
    raise SystemExit(main())
