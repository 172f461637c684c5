"""ACDC label values, evaluated structures and disease groups, shared by the data, metrics and latent code."""
from __future__ import annotations

#: ACDC label values: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles inside 3).
BACKGROUND, RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY = 0, 1, 2, 3
#: Number of label values (background included).
N_LABELS = 4

#: The five structures of the paper's table, each as the set of label values it unites.
STRUCTURES: dict[str, tuple[int, ...]] = {
    "LV blood pool": (LV_CAVITY,),
    "LV myocardium": (LV_MYOCARDIUM,),
    "LV epicardium": (LV_MYOCARDIUM, LV_CAVITY),
    "RV": (RV_CAVITY,),
    "Whole heart": (RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY),
}

#: ACDC disease groups, in the order used for integer class indices everywhere in the project.
GROUPS: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")

#: Long names, for figures and the app.
GROUP_NAMES: dict[str, str] = {
    "NOR": "normal",
    "DCM": "dilated cardiomyopathy",
    "HCM": "hypertrophic cardiomyopathy",
    "MINF": "myocardial infarction",
    "RV": "abnormal right ventricle",
}
