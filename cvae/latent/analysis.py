"""Disease clustering in the latent space: 2-D projections of a cohort's codes and the paper's classification.

Input is a cohort table of :func:`cvae.latent.encode_cohort` (columns ``subject``, ``group``, ``mu_1..mu_d``); only
the codes ``mu`` are used, so subjects without labels (NaN clinical measures) take part as well.

**CCA against the groups.** Canonical correlation analysis between the codes and the one-hot group matrix finds
the directions of the latent space that correlate most with the disease. With ``c`` groups the one-hot matrix has
rank ``c - 1`` once centred, so there are at most ``c - 1`` informative components (4 for the 5 ACDC groups):
where the paper says "six most discriminative CCA components", we use all that exist.

**Classification without leakage.** The paper fitted CCA on all test codes and then cross-validated an SVM on the
CCA components; the CCA has then seen the labels of every test fold, which inflates the accuracy (on pure noise
codes noticeably so). :func:`classify` fits CCA inside each training fold (a scikit-learn ``Pipeline``) and reports
that accuracy, with the confusion matrix, the chance level and a permutation-test p-value; the paper's protocol is
reported beside it, labelled as such.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score, permutation_test_score
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from cvae.io.atomic import write_csv
from cvae.latent.table import check_table, group_order, mu_columns
from cvae.paths import cache_root

__all__ = ["OneHotCCA", "codes_and_groups", "make_classifier", "classify", "ClassificationReport", "project",
           "PROJECTIONS", "PAPER_CCA_COMPONENTS"]

#: Projection methods of :func:`project`.
PROJECTIONS: tuple[str, ...] = ("cca", "umap", "pca")
#: Number of CCA components the paper fed to its SVM (more than exist for 5 classes, see the module docstring).
PAPER_CCA_COMPONENTS = 6
#: Bump when projections change, so that cached ones are recomputed.
PROJECTION_VERSION = "1"


def codes_and_groups(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (n, d) float64, groups (n,) str)`` of a cohort table; ``ValueError`` for NaN codes or groups."""
    d = check_table(table)
    x = table[mu_columns(d)].to_numpy(dtype=np.float64)
    if not np.isfinite(x).all():
        bad = table.loc[~np.isfinite(x).all(axis=1), "subject"].astype(str).tolist()
        raise ValueError(f"latent codes of {bad[:3]} are NaN or infinite: re-encode the cohort")
    groups = table["group"]
    if groups.isna().any():
        raise ValueError("some subjects have no group: every row of the table needs its disease group")
    return x, groups.astype(str).to_numpy()


class OneHotCCA(TransformerMixin, BaseEstimator):
    """CCA of ``X (n, d)`` against the one-hot matrix of class labels ``y``, as a scikit-learn transformer.

    ``fit(X, y)`` needs the labels; ``transform(X)`` does not (it returns the X-side canonical scores), so the
    transformer can sit in a ``Pipeline`` before a classifier. ``n_components`` (``None``: as many as exist) is
    capped at ``min(classes - 1, d, n - 1)``; the fitted number is ``n_components_``.
    """

    def __init__(self, n_components: int | None = None, max_iter: int = 1000) -> None:
        self.n_components = n_components
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> "OneHotCCA":
        X = np.asarray(X, dtype=np.float64)
        if y is None:
            raise ValueError("OneHotCCA.fit needs the class labels y")
        self.classes_, index = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"CCA against the groups needs at least 2 groups, got only {list(self.classes_)}")
        limit = min(len(self.classes_) - 1, X.shape[1], X.shape[0] - 1)
        self.n_components_ = limit if self.n_components is None else min(int(self.n_components), limit)
        if self.n_components_ < 1:
            raise ValueError(f"CCA has no component to fit with {X.shape[0]} subjects and {X.shape[1]} features")
        onehot = np.eye(len(self.classes_))[index]
        with warnings.catch_warnings():
            # NIPALS may stop at max_iter on the last, weakest component; the scores are still usable.
            warnings.filterwarnings("ignore", message=".*Maximum number of iterations reached.*")
            self.cca_ = CCA(n_components=self.n_components_, max_iter=self.max_iter).fit(X, onehot)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """X-side canonical scores ``(n, n_components_)``, in decreasing order of canonical correlation."""
        return self.cca_.transform(np.asarray(X, dtype=np.float64))


def make_classifier(n_components: int | None = None, kernel: str = "rbf", C: float = 1.0) -> Pipeline:
    """The leak-free classifier: ``OneHotCCA`` (fitted on the training data only) followed by an SVM."""
    return Pipeline([("cca", OneHotCCA(n_components)), ("svm", SVC(kernel=kernel, C=C))])


@dataclass
class ClassificationReport:
    """Result of :func:`classify`; accuracies are fractions (0-1).

    ``confusion`` has true groups as rows and predicted groups as columns (counts over all folds, from
    ``cross_val_predict``). ``chance`` is the accuracy of always answering the largest group. ``p_value`` is the
    permutation-test p-value of the leak-free accuracy (``None`` without permutations). ``paper_*`` are the
    accuracies of the paper's leaky protocol (CCA fitted on all subjects, then a cross-validated SVM).
    """

    groups: list[str]
    n_subjects: int
    n_folds: int
    n_components: int
    kernel: str
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list[float]
    confusion: pd.DataFrame
    chance: float
    p_value: float | None
    n_permutations: int
    paper_accuracy_mean: float
    paper_accuracy_std: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able dict (the confusion matrix as nested lists, rows = true groups)."""
        out = asdict(self)
        out["confusion"] = self.confusion.to_numpy().tolist()
        return out

    def to_markdown(self) -> str:
        """A short Markdown summary: the two protocols, chance level, p-value and the confusion matrix."""
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g} ({self.n_permutations} permutations)"
        lines = [
            f"| protocol | accuracy ({self.n_folds}-fold, {self.n_subjects} subjects) |",
            "|---|---|",
            f"| leak-free: CCA ({self.n_components} comp.) fitted in each training fold + SVM ({self.kernel}) "
            f"| {100 * self.accuracy_mean:.1f} +- {100 * self.accuracy_std:.1f} % |",
            f"| paper's protocol (leaky): CCA fitted on all subjects, then CV SVM "
            f"| {100 * self.paper_accuracy_mean:.1f} +- {100 * self.paper_accuracy_std:.1f} % |",
            f"| chance (largest group) | {100 * self.chance:.1f} % |",
            "",
            f"Permutation test of the leak-free accuracy: p = {p}.",
            "",
            "Confusion matrix (rows: true group, columns: predicted, counts over all folds):",
            "",
            "| true \\ predicted | " + " | ".join(self.confusion.columns) + " |",
            "|---" * (len(self.confusion.columns) + 1) + "|",
        ]
        lines += [f"| {g} | " + " | ".join(str(int(v)) for v in row) + " |"
                  for g, row in zip(self.confusion.index, self.confusion.to_numpy())]
        lines += [""] + [f"Note: {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _folds(groups: np.ndarray, folds: int, notes: list[str]) -> int:
    """Number of stratified folds: ``folds``, reduced (with a warning) to the size of the smallest group."""
    if int(folds) < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    names, counts = np.unique(groups, return_counts=True)
    if len(names) < 2:
        raise ValueError(f"the cohort has a single group ({names[0]}): classification needs at least 2 groups")
    smallest = int(counts.min())
    if smallest < 2:
        raise ValueError(f"group {names[counts.argmin()]} has only {smallest} subject: stratified cross-validation "
                         "needs at least 2 subjects per group")
    if smallest < folds:
        message = (f"reduced cross-validation from {folds} to {smallest} folds: the smallest group "
                   f"({names[counts.argmin()]}) has {smallest} subjects")
        warnings.warn(message, stacklevel=3)
        notes.append(message)
        return smallest
    return int(folds)


def classify(table: pd.DataFrame, folds: int = 10, permutations: int = 100, seed: int = 0,
             kernel: str = "rbf", C: float = 1.0) -> ClassificationReport:
    """Classify the disease groups from the codes ``mu``: CCA components + SVM, stratified k-fold CV.

    Leak-free protocol (reported as ``accuracy_*``): CCA is fitted inside each training fold. The paper's protocol
    (``paper_accuracy_*``): CCA fitted on all subjects first. Both use all CCA components that exist (at most
    ``groups - 1``; the paper asked for 6). ``folds`` is reduced with a warning when the smallest group is smaller;
    ``permutations`` (0 to skip) label shuffles give the p-value of the leak-free accuracy. Runs in a few seconds
    for 100 subjects and 100 permutations.
    """
    if int(permutations) < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    x, groups = codes_and_groups(table)
    notes: list[str] = []
    n_folds = _folds(groups, folds, notes)
    order = group_order(groups)
    n_components = OneHotCCA().fit(x, groups).n_components_
    if n_components < PAPER_CCA_COMPONENTS:
        notes.append(f"the paper used the {PAPER_CCA_COMPONENTS} most discriminative CCA components; with "
                     f"{len(order)} groups and {x.shape[1]}-D codes only {n_components} exist, all used")
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    pipeline = make_classifier(None, kernel, C)
    scores = cross_val_score(pipeline, x, groups, cv=cv)
    predicted = cross_val_predict(pipeline, x, groups, cv=cv)
    confusion = pd.DataFrame(confusion_matrix(groups, predicted, labels=order), index=order, columns=order)
    p_value = None
    if permutations:
        _, _, p_value = permutation_test_score(pipeline, x, groups, cv=cv, n_permutations=int(permutations),
                                               random_state=seed)
    leaky_codes = OneHotCCA().fit_transform(x, groups)
    leaky = cross_val_score(SVC(kernel=kernel, C=C), leaky_codes, groups, cv=cv)
    chance = float(np.unique(groups, return_counts=True)[1].max() / len(groups))
    return ClassificationReport(
        groups=order, n_subjects=len(groups), n_folds=n_folds, n_components=int(n_components), kernel=kernel,
        accuracy_mean=float(scores.mean()), accuracy_std=float(scores.std()),
        fold_accuracies=[float(s) for s in scores], confusion=confusion, chance=chance,
        p_value=None if p_value is None else float(p_value), n_permutations=int(permutations),
        paper_accuracy_mean=float(leaky.mean()), paper_accuracy_std=float(leaky.std()), notes=notes)


# ---------------------------------------------------------------------------------------------------------------
# 2-D projections


def _project(x: np.ndarray, groups: np.ndarray, method: str, seed: int) -> np.ndarray:
    n = x.shape[0]
    if n < 2 or x.shape[1] < 2:
        raise ValueError(f"a 2-D projection needs at least 2 subjects and 2 latent dimensions, got codes of shape "
                         f"{x.shape}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "cca":
        if len(set(groups)) < 3:
            raise ValueError(f"a 2-D CCA projection needs at least 3 groups (it has {len(set(groups))}): use "
                             "method='pca' or 'umap'")
        return OneHotCCA(n_components=2).fit_transform(x, groups)
    if n < 4:
        raise ValueError(f"UMAP needs at least 4 subjects, got {n}: use method='pca'")
    import umap  # deferred: importing umap-learn costs seconds (numba)

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed,
                        init="spectral" if n > 10 else "random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        return reducer.fit_transform(x)


def _projection_path(table: pd.DataFrame, method: str, seed: int) -> Path:
    d = check_table(table)
    columns = ["subject", "group", *mu_columns(d)]
    digest = hashlib.sha256(pd.util.hash_pandas_object(table[columns], index=False).to_numpy().tobytes())
    digest.update(f"|{method}|{seed}|{PROJECTION_VERSION}".encode())
    return cache_root() / "latent" / "projections" / f"{digest.hexdigest()[:20]}-{method}.csv"


def project(table: pd.DataFrame, method: str = "cca", seed: int = 0, cache: bool = True) -> pd.DataFrame:
    """2-D projection of the cohort's codes: ``DataFrame(x, y, subject, group)``, one row per subject.

    ``method``: ``"cca"`` (the two most discriminative CCA components against the groups, fitted on all subjects
    with their labels: a picture of the group structure, optimistic by construction; needs >= 3 groups),
    ``"umap"`` (umap-learn, seeded: reproducible) or ``"pca"``. Cached on disk (CSV under
    ``cache_root()/latent/projections/``) per (codes, subjects, groups, method, seed), since UMAP's first call
    costs seconds of numba compilation.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection method {method!r}: use one of {', '.join(PROJECTIONS)}")
    x, groups = codes_and_groups(table)
    path = _projection_path(table, method, seed)
    if cache and path.is_file():
        try:
            cached = pd.read_csv(path, dtype={"subject": str, "group": str})
            if list(cached.columns) == ["x", "y", "subject", "group"] and len(cached) == len(table):
                return cached
        except (OSError, ValueError, pd.errors.ParserError):
            pass
    xy = _project(x, groups, method, seed)
    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "subject": table["subject"].astype(str).to_numpy(),
                        "group": groups})
    if cache:
        write_csv(out, path)
    return out
