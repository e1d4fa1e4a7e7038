"""The benchmark registry: where each test set lives on disk, how its files pair up, and how its inputs are made.

One `DatasetSpec` per benchmark, as plain data: the folder layouts it can be found in (the MoCE-IR layout under
`--data_file_dir`, the PromptIR/AdaIR `test/...` layout, the original releases), the rule that pairs an input with
its ground truth, the metric protocol the papers use for it (`irtool.evaluation.metrics`), the noise level for sets whose
inputs are synthesised at test time, the download source and licence. The training sets of `irtool train`'s presets
are further specs with `split="train"`, in `TRAINING_SETS` (`get_spec` and `irtool datasets check` find them).

Test inputs are made exactly as MoCE-IR's test script makes them (`src/data/dataset_utils.py` `IRBenchmarks`):
images read with PIL and converted to RGB, centre-cropped to a multiple of 16, and for the denoising sets
`clip(clean + randn(*shape) * sigma, 0, 255)` cast to uint8 by truncation, drawn from one `np.random.seed(0)`
stream over the files in sorted order and over the noise levels in the order they run (`NoiseStream`). PromptIR's
`DenoiseTestDataset` draws the same formula but over `os.listdir`'s unsorted order, which depends on the filesystem,
so its noisy inputs can be reproduced only on the machine that listed them; irtool reproduces MoCE-IR's.

`synthetic:<kind><level>` sets (`locate_synthetic`) need no download: clean photos (the CC0/public-domain ones in
scikit-image's wheel, or `--clean-dir`) degraded by `irtool.degrade`, seeded per image.

Standard library, numpy and Pillow (platformdirs for the default data root; irtool.degrade, with OpenCV, only when
inputs are made); no torch, so `irtool datasets ...` is instant.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError, IrtoolError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SIGMAS = (15, 25, 50)


class DatasetError(IrtoolError):
    """A benchmark is unknown, missing or incomplete on disk."""


# --------------------------------------------------------------------------------------------------------------------
# Registry data


@dataclass(frozen=True)
class Layout:
    """One way a dataset is laid out under the data root. Paths are relative and use '/'."""

    name: str  #: who uses this layout ("moce-ir", "promptir", "adair", "histoformer", "original", ...)
    gt: str  #: folder of ground-truth images
    lq: str | None = None  #: folder of degraded inputs; None when inputs are synthesised (noise sets)


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark: what it is, where it can be, how to pair and score it."""

    name: str  #: registry key, also the key of a checkpoint's `reported` figures in the manifest
    title: str  #: as the papers print it
    task: str  #: noise, rain, haze, blur, lowlight, composite, snow, raindrop
    layouts: tuple[Layout, ...]
    protocol: str  #: default metric protocol (irtool.evaluation.metrics.PROTOCOLS)
    source: str  #: where to download it, in words
    licence: str
    #: the address to download it from (the official AdaIR/PromptIR/MoCE-IR install docs' links, else the authors'
    #: project page); None for sets made at test time
    url: str | None = None
    split: str = "test"
    sigma: int | None = None  #: AWGN sigma of inputs synthesised at test time
    key_rules: tuple[tuple[str, str], ...] = ()  #: regex substitutions on file stems that make partners' keys equal
    pairing: str = "same file stem"  #: the pairing rule in words
    expected: int | None = None  #: number of test pairs in the standard release
    crop: bool = True  #: the official test crops this set to the protocol's multiple (CDD-11's does not)
    degradation: tuple[str, float] | None = None  #: (kind, level) for irtool.degrade-made inputs (synthetic: sets)
    notes: str = ""

    @property
    def synthesised(self) -> bool:
        """Inputs drawn from the official test-noise stream (the clean-only denoising sets)."""
        return self.sigma is not None

    @property
    def clean_only(self) -> bool:
        """Only clean images on disk: inputs are made at test time (noise sets and synthetic: sets)."""
        return self.sigma is not None or self.degradation is not None


def _promptir(lq: str | None, gt: str) -> tuple[Layout, ...]:
    """PromptIR keeps test data under `test/`, AdaIR under `data/test/`; same folders otherwise."""
    return (Layout("promptir", gt, lq), Layout("adair", f"data/{gt}", f"data/{lq}" if lq else None))


_BSDS_LICENCE = "Berkeley Segmentation Dataset images: free for non-commercial research and education (BSDS terms)"
_RESEARCH_ONLY = "no licence stated by the authors; treat as research-only"

_RAIN_KEYS = ((r"^(no)?rain[-_]?", ""),)  # rain-001.png <-> norain-001.png (Rain100L/H as distributed by JORDER)


def _noise_family(
    name: str, title: str, layouts: tuple[Layout, ...], source: str, url: str, licence: str, expected: int, notes: str
) -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name=f"{name}-{sigma}",
            title=f"{title} σ{sigma}",
            task="noise",
            layouts=layouts,
            protocol="moce",
            source=source,
            url=url,
            licence=licence,
            sigma=sigma,
            pairing="clean images only; the noisy input is synthesised (seed 0, sorted files, truncating uint8 cast)",
            expected=expected,
            notes=notes,
        )
        for sigma in SIGMAS
    ]


_CDD11_SUBSETS = (
    "low", "haze", "rain", "snow",
    "low_haze", "low_rain", "low_snow", "haze_rain", "haze_snow",
    "low_haze_rain", "low_haze_snow",
)  # fmt: skip


def _cdd11(subset: str) -> DatasetSpec:
    return DatasetSpec(
        name=f"cdd11-{subset.replace('_', '-')}",
        title=f"CDD-11 {subset.replace('_', '+')}",
        task="composite",
        layouts=(
            Layout("moce-ir", "cdd11/test/clear", f"cdd11/test/{subset}"),
            Layout("original", "CDD-11_test/clear", f"CDD-11_test/{subset}"),
        ),
        protocol="moce",
        source="OneRestore (github.com/gy65896/OneRestore; Hugging Face dataset gy65896/CDD-11)",
        url="https://github.com/gy65896/OneRestore",
        licence="see the OneRestore repository; " + _RESEARCH_ONLY,
        expected=200,
        crop=False,
        notes="MoCE-IR's CDD11 loader feeds full images (no crop to 16)",
    )


_SNOW100K = "Snow100K (sites.google.com/view/yunfuliu/desnownet), or the AllWeather bundle of TransWeather/Histoformer"
_ALLWEATHER_NOTE = "AllWeather protocol (TransWeather, Histoformer, LoRA-IR Setting I): Y channel"

_SPECS: list[DatasetSpec] = [
    *_noise_family(
        "cbsd68",
        "CBSD68",
        (
            Layout("moce-ir", "denoising/cBSD68/original_png"),
            *_promptir(None, "test/denoise/bsd68"),
            Layout("original", "CBSD68/original_png"),
        ),
        source="github.com/clausmichele/CBSD68-dataset (original_png/)",
        url="https://github.com/clausmichele/CBSD68-dataset",
        licence=_BSDS_LICENCE,
        expected=68,
        notes="3-task setting runs σ15, σ25, σ50 in one noise stream; 5-task runs σ25 alone",
    ),
    *_noise_family(
        "urban100",
        "Urban100",
        (Layout("moce-ir", "denoising/Urban100"), *_promptir(None, "test/denoise/urban100")),
        source="Huang et al., CVPR 2015; Google Drive folder linked from PromptIR's INSTALL.md",
        url="https://drive.google.com/drive/folders/1B3DJGQKB6eNdwuQIhdskA64qUuVKLZ9u",
        licence=_RESEARCH_ONLY,
        expected=100,
        notes="not in the MoCE-IR test script; irtool puts it beside cBSD68 in the MoCE-IR layout",
    ),
    *_noise_family(
        "kodak24",
        "Kodak24",
        (
            Layout("moce-ir", "denoising/Kodak24"),
            *_promptir(None, "test/denoise/kodak24"),
            Layout("original", "Kodak24"),
        ),
        source="r0k.us/graphics/kodak (kodim01.png ... kodim24.png)",
        url="https://r0k.us/graphics/kodak/",
        licence="Kodak PhotoCD sample images, released by Eastman Kodak for unrestricted use",
        expected=24,
        notes="not in the MoCE-IR test script; irtool puts it beside cBSD68 in the MoCE-IR layout",
    ),
    DatasetSpec(
        name="rain100l",
        title="Rain100L",
        task="rain",
        layouts=(
            Layout("moce-ir", "deraining/Rain100L/gt", "deraining/Rain100L/rainy"),
            *_promptir("test/derain/Rain100L/input", "test/derain/Rain100L/target"),
            Layout("restormer", "test/Rain100L/target", "test/Rain100L/input"),
        ),
        protocol="moce",
        source="Yang et al., CVPR 2017 (JORDER); Train100L & Rain100L Google Drive folder linked from PromptIR's INSTALL.md",
        url="https://drive.google.com/drive/folders/1-_Tw-LHJF4vh8fpogKgZx1EQ9MhsJI_f",
        licence=_RESEARCH_ONLY,
        key_rules=_RAIN_KEYS,
        pairing="same stem after dropping a 'rain-' / 'norain-' prefix (rain-001.png <-> norain-001.png)",
        expected=100,
    ),
    DatasetSpec(
        name="rain100h",
        title="Rain100H",
        task="rain",
        layouts=(
            Layout("moce-ir", "deraining/Rain100H/gt", "deraining/Rain100H/rainy"),
            *_promptir("test/derain/Rain100H/input", "test/derain/Rain100H/target"),
            Layout("restormer", "test/Rain100H/target", "test/Rain100H/input"),
        ),
        protocol="moce",
        source="Yang et al., CVPR 2017 (JORDER); the Restormer/MPRNet deraining test bundle",
        url="https://drive.google.com/file/d/1P_-RAvltEoEhfT-9GrWRdpEi6NSswTs8/view",  # Restormer's rain13k_test
        licence=_RESEARCH_ONLY,
        key_rules=_RAIN_KEYS,
        pairing="same stem after dropping a 'rain-' / 'norain-' prefix",
        expected=100,
        notes="not an all-in-one benchmark; deraining papers often score it on Y (use --protocol y)",
    ),
    DatasetSpec(
        name="sots-outdoor",
        title="SOTS-outdoor",
        task="haze",
        layouts=(
            Layout("moce-ir", "dehazing/SOTS/outdoor/gt", "dehazing/SOTS/outdoor/hazy"),
            *_promptir("test/dehaze/input", "test/dehaze/target"),
            Layout("original", "SOTS/outdoor/gt", "SOTS/outdoor/hazy"),
        ),
        protocol="moce",
        source="RESIDE (sites.google.com/view/reside-dehaze-datasets), SOTS outdoor of RESIDE-v0",
        url="https://sites.google.com/view/reside-dehaze-datasets/reside-v0",
        licence="RESIDE terms: research use",
        key_rules=((r"_.*$", ""),),
        pairing="hazy 0001_0.8_0.2.jpg <-> clear 0001.png (the stem up to the first '_')",
        expected=500,
    ),
    DatasetSpec(
        name="gopro",
        title="GoPro",
        task="blur",
        layouts=(
            Layout("moce-ir", "deblurring/GoPro/test/target", "deblurring/GoPro/test/input"),
            *_promptir("test/deblur/gopro/input", "test/deblur/gopro/target"),
            Layout("restormer", "test/GoPro/target", "test/GoPro/input"),
        ),
        protocol="moce",
        source="Nah et al., CVPR 2017 (seungjunnah.github.io/Datasets/gopro); flattened test set linked from AdaIR's INSTALL.md",
        url="https://drive.google.com/file/d/1y_wQ5G5B65HS_mdIjxKYTcnRys_AGh5v/view",
        licence="CC BY 4.0",
        expected=1111,
        notes="use the 'blur' images, not 'blur_gamma' (MPRNet issue #75); the original per-sequence folders must be flattened",
    ),
    DatasetSpec(
        name="lol-v1",
        title="LOL-v1",
        task="lowlight",
        layouts=(
            Layout("moce-ir", "llie/LOLv1/Test/target", "llie/LOLv1/Test/input"),
            *_promptir("test/enhance/lol/input", "test/enhance/lol/target"),
            Layout("original", "eval15/high", "eval15/low"),
            Layout("original-zip", "LOLdataset/eval15/high", "LOLdataset/eval15/low"),
        ),
        protocol="moce",
        source="Wei et al., BMVC 2018 (daooshee.github.io/BMVC2018website), eval15",
        url="https://daooshee.github.io/BMVC2018website/",
        licence=_RESEARCH_ONLY,
        expected=15,
    ),
    *[_cdd11(subset) for subset in _CDD11_SUBSETS],
    DatasetSpec(
        name="snow100k-s",
        title="Snow100K-S",
        task="snow",
        layouts=(
            Layout("histoformer", "allweather/test/Snow100K-S/gt", "allweather/test/Snow100K-S/synthetic"),
            Layout("original", "Snow100K/test/Snow100K-S/gt", "Snow100K/test/Snow100K-S/synthetic"),
        ),
        protocol="y",
        source=_SNOW100K,
        url="https://sites.google.com/view/yunfuliu/desnownet",
        licence=_RESEARCH_ONLY,
        expected=16611,
        notes=_ALLWEATHER_NOTE,
    ),
    DatasetSpec(
        name="snow100k-l",
        title="Snow100K-L",
        task="snow",
        layouts=(
            Layout("histoformer", "allweather/test/Snow100K-L/gt", "allweather/test/Snow100K-L/synthetic"),
            Layout("original", "Snow100K/test/Snow100K-L/gt", "Snow100K/test/Snow100K-L/synthetic"),
        ),
        protocol="y",
        source=_SNOW100K,
        url="https://sites.google.com/view/yunfuliu/desnownet",
        licence=_RESEARCH_ONLY,
        expected=16801,
        notes=_ALLWEATHER_NOTE,
    ),
    DatasetSpec(
        name="outdoor-rain",
        title="Outdoor-Rain Test1",
        task="rain",
        layouts=(
            Layout("histoformer", "allweather/test/Test1/gt", "allweather/test/Test1/input"),
            Layout("transweather", "test1/gt", "test1/input"),
        ),
        protocol="y",
        source="Li et al., CVPR 2019 (github.com/liruoteng/HeavyRainRemoval); Test1 as bundled by TransWeather/Histoformer",
        url="https://github.com/liruoteng/HeavyRainRemoval",
        licence=_RESEARCH_ONLY,
        key_rules=((r"_s\d+_a\d+$", ""),),
        pairing="same stem, or im_0001_s80_a04 <-> im_0001 (rain/fog parameters dropped)",
        expected=750,
        notes=_ALLWEATHER_NOTE,
    ),
    DatasetSpec(
        name="raindrop-a",
        title="RainDrop test_a",
        task="raindrop",
        layouts=(
            Layout("histoformer", "allweather/test/RainDrop/gt", "allweather/test/RainDrop/input"),
            Layout("original", "test_a/gt", "test_a/data"),
        ),
        protocol="y",
        source="Qian et al., CVPR 2018 (github.com/rui1996/DeRaindrop), test_a",
        url="https://github.com/rui1996/DeRaindrop",
        licence=_RESEARCH_ONLY,
        key_rules=((r"_(rain|clean)$", ""),),
        pairing="same stem, or 0_rain <-> 0_clean",
        expected=58,
        notes=_ALLWEATHER_NOTE,
    ),
]

# Training splits, for `irtool train`'s presets: the folders MoCE-IR's `AIOTrainDataset` globs under --data_file_dir
# (`src/data/dataset_utils.py`), PromptIR/AdaIR's `data/Train/...`, and the original releases. Clean-image sets
# (denoising) have no inputs: the trainer adds the noise on the fly.
_MOCE_TRAIN_NOTE = "MoCE-IR/PromptIR/AdaIR training set (irtool train presets moce_ir*-aio3/-aio5)"
_SETTING1_NOTE = (
    "LoRA-IR Setting I training set (AllWeather); LoRA-IR's configs list one folder per class, to be filled in: "
    "irtool looks for them under allweather/train/ named like the test sets"
)


def _ots_part(part: int, expected: int) -> DatasetSpec:
    return DatasetSpec(
        name=f"ots-train-part{part}",
        title=f"RESIDE OTS part {part}",
        task="haze",
        layouts=(
            Layout("moce-ir", "dehazing/RESIDE/clear", f"dehazing/RESIDE/part{part}"),
            Layout("promptir", "data/Train/Dehaze/original", f"data/Train/Dehaze/synthetic/part{part}"),
        ),
        protocol="moce",
        source="RESIDE (sites.google.com/view/reside-dehaze-datasets), OTS; split into four parts by PromptIR's "
        "data_dir/hazy/hazy_outside.txt",
        url="https://sites.google.com/view/reside-dehaze-datasets/reside-%CE%B2",
        licence="RESIDE terms: research use",
        split="train",
        key_rules=((r"_.*$", ""),),
        pairing="hazy 0001_0.8_0.2.jpg <-> clear 0001.jpg (the stem up to the first '_'); 35 hazy images per clean one",
        expected=expected,
        crop=False,
        notes=_MOCE_TRAIN_NOTE,
    )


_TRAIN_SPECS: list[DatasetSpec] = [
    DatasetSpec(
        name="wed-train",
        title="Waterloo Exploration Database",
        task="noise",
        layouts=(
            Layout("moce-ir", "denoising/WaterlooED"),
            Layout("original", "exploration_database_and_code/pristine_images"),
        ),
        protocol="moce",
        source="Ma et al., TIP 2017 (ece.uwaterloo.ca/~k29ma/exploration); Google Drive mirror in PromptIR's INSTALL.md",
        url="https://drive.google.com/file/d/1e62XGdi5c6IbvkZ70LFq0KLRhFvih7US/view",
        licence=_RESEARCH_ONLY,
        split="train",
        pairing="clean images only; the trainer adds Gaussian noise on the fly",
        expected=4744,
        crop=False,
        notes=_MOCE_TRAIN_NOTE,
    ),
    DatasetSpec(
        name="bsd400-train",
        title="BSD400",
        task="noise",
        layouts=(Layout("moce-ir", "denoising/BSD400"), Layout("original", "BSD400")),
        protocol="moce",
        source="Berkeley Segmentation Dataset train+test (400 images); Google Drive folder linked from PromptIR's INSTALL.md",
        url="https://drive.google.com/file/d/1idKFDkAHJGAFDn1OyXZxsTbOSBx9GS8N/view",
        licence=_BSDS_LICENCE,
        split="train",
        pairing="clean images only; the trainer adds Gaussian noise on the fly",
        expected=400,
        crop=False,
        notes=_MOCE_TRAIN_NOTE,
    ),
    DatasetSpec(
        name="rain100l-train",
        title="Rain100L train (RainTrainL)",
        task="rain",
        layouts=(
            Layout("moce-ir", "deraining/RainTrainL/gt", "deraining/RainTrainL/rainy"),
            Layout("promptir", "data/Train/Derain/gt", "data/Train/Derain/rainy"),
        ),
        protocol="moce",
        source="Yang et al., CVPR 2017 (JORDER); Train100L Google Drive folder linked from PromptIR's INSTALL.md",
        url="https://drive.google.com/drive/folders/1-_Tw-LHJF4vh8fpogKgZx1EQ9MhsJI_f",
        licence=_RESEARCH_ONLY,
        split="train",
        key_rules=_RAIN_KEYS,
        pairing="same stem after dropping a 'rain-' / 'norain-' prefix (rain-1.png <-> norain-1.png)",
        expected=200,
        crop=False,
        notes=_MOCE_TRAIN_NOTE,
    ),
    _ots_part(1, 18200),
    _ots_part(2, 18200),
    _ots_part(3, 18200),
    _ots_part(4, 17535),
    DatasetSpec(
        name="gopro-train",
        title="GoPro train (crops)",
        task="blur",
        layouts=(
            Layout("moce-ir", "deblurring/GoPro/crop/train/target_crops", "deblurring/GoPro/crop/train/input_crops"),
            Layout("adair", "data/Train/Deblur/sharp", "data/Train/Deblur/blur"),
        ),
        protocol="moce",
        source="Nah et al., CVPR 2017; cropped with Restormer's GoPro preprocessing (MoCE-IR issue #12)",
        url="https://seungjunnah.github.io/Datasets/gopro",
        licence="CC BY 4.0",
        split="train",
        pairing="same file name",
        crop=False,
        notes=_MOCE_TRAIN_NOTE + "; 2,103 frames before cropping",
    ),
    DatasetSpec(
        name="lol-v1-train",
        title="LOL-v1 train",
        task="lowlight",
        layouts=(
            Layout("moce-ir", "llie/LOLv1/Train/target", "llie/LOLv1/Train/input"),
            Layout("adair", "data/Train/Enhance/gt", "data/Train/Enhance/low"),
            Layout("original", "our485/high", "our485/low"),
            Layout("original-zip", "LOLdataset/our485/high", "LOLdataset/our485/low"),
        ),
        protocol="moce",
        source="Wei et al., BMVC 2018 (daooshee.github.io/BMVC2018website), our485",
        url="https://daooshee.github.io/BMVC2018website/",
        licence=_RESEARCH_ONLY,
        split="train",
        expected=485,
        crop=False,
        notes=_MOCE_TRAIN_NOTE,
    ),
    DatasetSpec(
        name="snow100k-train",
        title="Snow100K train",
        task="snow",
        layouts=(
            Layout("irtool", "allweather/train/Snow100K/gt", "allweather/train/Snow100K/synthetic"),
            Layout("original", "Snow100K/train/gt", "Snow100K/train/synthetic"),
        ),
        protocol="y",
        source=_SNOW100K,
        url="https://sites.google.com/view/yunfuliu/desnownet",
        licence=_RESEARCH_ONLY,
        split="train",
        crop=False,
        notes=_SETTING1_NOTE,
    ),
    DatasetSpec(
        name="outdoor-rain-train",
        title="Outdoor-Rain train",
        task="rain",
        layouts=(Layout("irtool", "allweather/train/Outdoor-Rain/gt", "allweather/train/Outdoor-Rain/input"),),
        protocol="y",
        source="Li et al., CVPR 2019 (github.com/liruoteng/HeavyRainRemoval)",
        url="https://github.com/liruoteng/HeavyRainRemoval",
        licence=_RESEARCH_ONLY,
        split="train",
        key_rules=((r"_s\d+_a\d+$", ""),),
        pairing="same stem, or im_0001_s80_a04 <-> im_0001 (rain/fog parameters dropped)",
        crop=False,
        notes=_SETTING1_NOTE,
    ),
    DatasetSpec(
        name="raindrop-train",
        title="RainDrop train",
        task="raindrop",
        layouts=(
            Layout("irtool", "allweather/train/RainDrop/gt", "allweather/train/RainDrop/input"),
            Layout("original", "train/gt", "train/data"),
        ),
        protocol="y",
        source="Qian et al., CVPR 2018 (github.com/rui1996/DeRaindrop), train",
        url="https://github.com/rui1996/DeRaindrop",
        licence=_RESEARCH_ONLY,
        split="train",
        key_rules=((r"_(rain|clean)$", ""),),
        pairing="same stem, or 0_rain <-> 0_clean",
        crop=False,
        notes=_SETTING1_NOTE,
    ),
]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
#: training splits, kept apart from the benchmarks (`get_spec` finds both)
TRAINING_SETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _TRAIN_SPECS}

#: names that stand for several datasets, run in this order (noise levels 15 -> 25 -> 50 in one stream)
FAMILIES: dict[str, tuple[str, ...]] = {
    "cbsd68": ("cbsd68-15", "cbsd68-25", "cbsd68-50"),
    "urban100": ("urban100-15", "urban100-25", "urban100-50"),
    "kodak24": ("kodak24-15", "kodak24-25", "kodak24-50"),
    "cdd11": tuple(f"cdd11-{s.replace('_', '-')}" for s in _CDD11_SUBSETS),
}

#: the papers' settings: the datasets whose mean is the "average" column
SETTINGS: dict[str, tuple[str, ...]] = {
    "aio3": ("sots-outdoor", "rain100l", "cbsd68-15", "cbsd68-25", "cbsd68-50"),
    "aio5": ("sots-outdoor", "rain100l", "cbsd68-25", "gopro", "lol-v1"),
    "cdd11": FAMILIES["cdd11"],
    "allweather": ("snow100k-s", "snow100k-l", "outdoor-rain", "raindrop-a"),
}


def get_spec(name: str) -> DatasetSpec:
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    if key in TRAINING_SETS:
        return TRAINING_SETS[key]
    known = ", ".join([*DATASETS, *FAMILIES])
    raise DatasetError(f"{name}: unknown dataset (known: {known}, synthetic:<kind><level>)")


def expand(names: list[str] | tuple[str, ...] = (), settings: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Dataset names from `--dataset` values (names or families) and `--setting` values, in order, no repeats. Each
    value may also be a comma-separated list (`--dataset rain100l,sots-outdoor`)."""
    out: list[str] = []

    def split(values: list[str] | tuple[str, ...]) -> list[str]:
        return [part.strip() for value in values for part in value.split(",") if part.strip()]

    for setting in split(settings):
        key = setting.lower()
        if key not in SETTINGS:
            raise DatasetError(f"--setting {setting}: unknown (known: {', '.join(SETTINGS)})")
        out.extend(SETTINGS[key])
    for name in split(names):
        key = name.lower()
        if key.startswith("synthetic:"):
            out.append(key)
        elif key in FAMILIES:
            out.extend(FAMILIES[key])
        else:
            out.append(get_spec(key).name)
    return list(dict.fromkeys(out))  # each once, in first-named order


# --------------------------------------------------------------------------------------------------------------------
# Data root and finding files


def data_root(explicit: str | Path | None = None) -> Path:
    """--data-root, else $IRTOOL_DATA, else the platformdirs user data dir + /datasets."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("IRTOOL_DATA")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("irtool")) / "datasets"


def find_dir(root: Path, relative: str) -> Path | None:
    """`root/relative` as a folder, matching each part case-insensitively when the exact name is absent."""
    current = root
    for part in relative.split("/"):
        exact = current / part
        if exact.is_dir():
            current = exact
            continue
        if not current.is_dir():
            return None
        matches = sorted(p for p in current.iterdir() if p.is_dir() and p.name.lower() == part.lower())
        if not matches:
            return None
        current = matches[0]
    return current


def list_images(folder: Path) -> list[Path]:
    """Image files in a folder (not recursive), in sorted file-name order as the official `sorted(glob(...))`."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name
    )


def pair_key(stem: str, rules: tuple[tuple[str, str], ...]) -> str:
    """The key two partners share: the stem after the dataset's substitutions; numeric keys compare as numbers."""
    key = stem
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return str(int(key)) if key.isdigit() else key


@dataclass(frozen=True)
class Pair:
    name: str  #: the input's file name (the ground truth's for synthesised sets)
    gt: Path
    lq: Path | None = None  #: None for synthesised inputs


@dataclass
class Probe:
    """What one layout looks like on disk."""

    layout: Layout
    gt_dir: Path | None
    lq_dir: Path | None
    n_gt: int = 0
    n_lq: int = 0
    pairs: list[Pair] = field(default_factory=list)
    unpaired_inputs: list[str] = field(default_factory=list)  #: inputs with no ground truth
    unpaired_targets: list[str] = field(default_factory=list)  #: ground truths no input uses
    ambiguous: list[str] = field(default_factory=list)  #: keys shared by several ground truths

    @property
    def present(self) -> bool:
        """Some of this layout's files are there."""
        return self.n_gt > 0 or self.n_lq > 0


@dataclass
class Located:
    """A dataset found on disk: its pairs in evaluation order, and any problems seen while pairing."""

    spec: DatasetSpec
    root: Path
    probe: Probe
    warnings: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[Pair]:
        return self.probe.pairs

    @property
    def layout(self) -> Layout:
        return self.probe.layout


def probe_layout(spec: DatasetSpec, root: Path, layout: Layout) -> Probe:
    gt_dir = find_dir(root, layout.gt)
    lq_dir = find_dir(root, layout.lq) if layout.lq else None
    probe = Probe(layout, gt_dir, lq_dir)
    gts = list_images(gt_dir) if gt_dir else []
    probe.n_gt = len(gts)
    if layout.lq is None:
        probe.pairs = [Pair(p.name, p) for p in gts]
        return probe
    lqs = list_images(lq_dir) if lq_dir else []
    probe.n_lq = len(lqs)
    by_key: dict[str, list[Path]] = {}
    for p in gts:
        by_key.setdefault(pair_key(p.stem, spec.key_rules), []).append(p)
    used: set[Path] = set()
    for p in lqs:
        matches = by_key.get(pair_key(p.stem, spec.key_rules), [])
        if len(matches) == 1:
            probe.pairs.append(Pair(p.name, matches[0], p))
            used.add(matches[0])
        elif matches:
            probe.ambiguous.append(f"{p.name} -> {', '.join(m.name for m in matches)}")
        else:
            probe.unpaired_inputs.append(p.name)
    probe.unpaired_targets = [p.name for p in gts if p not in used]
    return probe


def locate(spec: DatasetSpec, root: str | Path | None = None) -> Located:
    """Find `spec` under the data root; raises DatasetError saying what is missing where."""
    report = check(spec, root)
    if report.located is None:
        where = f"download it from {spec.url}" if spec.url else f"source: {spec.source}"
        raise DatasetError(f"{report.summary}; {where}; run `irtool datasets check {spec.name}` for the paths tried")
    return report.located


@dataclass
class CheckReport:
    """`irtool datasets check`: whether a dataset is usable, and in words what is missing."""

    spec: DatasetSpec
    root: Path
    probes: list[Probe]
    located: Located | None
    summary: str

    @property
    def ok(self) -> bool:
        return self.located is not None

    def lines(self) -> list[str]:
        s = self.spec
        out = [self.summary]
        for probe in self.probes:
            lay = probe.layout
            chosen = self.located is not None and probe is self.located.probe
            mark = "*" if chosen else " "
            parts = []
            if lay.lq:
                parts.append(f"inputs {self.root / lay.lq}: {_count(probe.lq_dir, probe.n_lq)}")
            parts.append(
                f"{'ground truths' if lay.lq else 'clean images'} {self.root / lay.gt}: {_count(probe.gt_dir, probe.n_gt)}"
            )
            out.append(f" {mark} {lay.name:<12} " + "; ".join(parts))
        if self.located is not None:
            out.extend(f"   warning: {w}" for w in self.located.warnings)
        out.append(f"   pairing: {s.pairing}")
        out.append(
            f"   protocol: {s.protocol}" + (f"; inputs: AWGN σ{s.sigma} synthesised at test time" if s.sigma else "")
        )
        out.append(f"   source: {s.source}")
        if s.url:
            out.append(f"   download: {s.url}")
        out.append(f"   licence: {s.licence}")
        if s.notes:
            out.append(f"   note: {s.notes}")
        return out


def _count(folder: Path | None, n: int) -> str:
    if folder is None:
        return "missing"
    return f"{n} images" if n else "no images"


def _examples(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check(spec: DatasetSpec | str, root: str | Path | None = None) -> CheckReport:
    """Probe every layout of a dataset and say which one is usable, or exactly what is missing."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    base = data_root(root)
    probes = [probe_layout(spec, base, layout) for layout in spec.layouts]
    usable = next((p for p in probes if p.pairs), None)
    if usable is None:
        present = next((p for p in probes if p.present), None)
        if present is None:
            tried = ", ".join(p.layout.lq or p.layout.gt for p in probes)
            summary = f"{spec.name}: not found under {base} (tried {tried})"
        else:
            summary = f"{spec.name}: {_what_is_wrong(spec, base, present)}"
        return CheckReport(spec, base, probes, None, summary)

    located = Located(spec, base, usable)
    w = located.warnings
    if usable.unpaired_inputs:
        w.append(
            f"{len(usable.unpaired_inputs)} inputs have no ground truth in {usable.gt_dir}: {_examples(usable.unpaired_inputs)}"
        )
    if usable.ambiguous:
        w.append(f"{len(usable.ambiguous)} inputs match several ground truths: {_examples(usable.ambiguous)}")
    if usable.unpaired_targets and usable.layout.lq:
        w.append(f"{len(usable.unpaired_targets)} ground truths have no input: {_examples(usable.unpaired_targets)}")
    n = len(usable.pairs)
    if spec.expected and n != spec.expected:
        w.append(
            f"{n} pairs where the standard release has {spec.expected}: results are not comparable with the papers"
        )
    what = "clean images" if spec.clean_only else "pairs"
    summary = f"{spec.name}: found {n} {what} ({usable.layout.name} layout under {base})"
    if w:
        summary += f", {len(w)} warning{'s' if len(w) > 1 else ''}"
    return CheckReport(spec, base, probes, located, summary)


def _what_is_wrong(spec: DatasetSpec, base: Path, probe: Probe) -> str:
    lay = probe.layout
    gt_path = probe.gt_dir or base / lay.gt
    if lay.lq is None:
        return f"{gt_path} exists but holds no images"
    lq_path = probe.lq_dir or base / lay.lq
    if probe.n_lq == 0:
        return f"found {probe.n_gt} ground truths in {gt_path} but no inputs in {lq_path}"
    if probe.n_gt == 0:
        return f"found {probe.n_lq} inputs in {lq_path} but 0 ground truths in {gt_path}"
    return (
        f"none of the {probe.n_lq} inputs in {lq_path} pairs with the {probe.n_gt} ground truths in {gt_path} "
        f"(expected: {spec.pairing}; e.g. {_examples(probe.unpaired_inputs, 2)})"
    )


# --------------------------------------------------------------------------------------------------------------------
# Reading images and making the test inputs


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as the official scripts read it: `np.array(Image.open(path).convert('RGB'))`.

    No EXIF rotation and no colour management, on purpose: the benchmarks were scored on the pixels as stored.
    (BasicSR-based scripts read with cv2 instead; Pillow and OpenCV decode PNG and, with libjpeg-turbo's default
    IDCT in both, JPEG to the same pixels.)
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{path}: cannot be read as an image ({first_line(exc, None)})") from None


def centre_crop(image: np.ndarray, multiple: int | None) -> np.ndarray:
    """Centre crop of an (H, W, C) array to H, W multiples of `multiple` (the official `crop_img(image, base)`)."""
    if not multiple:
        return image
    h, w = image.shape[:2]
    dh, dw = h % multiple, w % multiple
    return image[dh // 2 : h - dh + dh // 2, dw // 2 : w - dw + dw // 2]


class NoiseStream:
    """The official test noise: one legacy numpy stream seeded once, drawn image after image, level after level.

    `np.random.seed(0)` followed by `np.random.randn(*img.shape)` per image (MoCE-IR and PromptIR test scripts) is the
    legacy MT19937 RandomState; a private RandomState(seed) yields the very same numbers without touching global
    state. `history` records which datasets drew from the stream, so a report can say which realisation it used.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = np.random.RandomState(seed)
        self.history: list[str] = []

    def add(self, clean: np.ndarray, sigma: float) -> np.ndarray:
        """`clip(clean + randn(*clean.shape) * sigma, 0, 255).astype(uint8)` (truncation, not rounding), drawn from
        this stream: irtool.degrade's noise on uint8, which is that recipe (tests check it against the scripts)."""
        from ..degrade import degrade

        return degrade(clean, "noise", sigma, seed=self.rng)

    def skip(self, shape: tuple[int, ...]) -> None:
        """Advance the stream past one image of this shape without making it."""
        self.rng.randn(*shape)


def _cropped_shape(path: Path, multiple: int | None) -> tuple[int, int, int]:
    """(H, W, 3) of an image after the centre crop, from its header alone."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc})") from None
    if multiple:
        h, w = h - h % multiple, w - w % multiple
    return h, w, 3


@dataclass
class Sample:
    name: str
    lq: np.ndarray  #: (H, W, 3) uint8 input, as fed to the network
    gt: np.ndarray  #: (H, W, 3) uint8 ground truth
    lq_path: Path | None
    gt_path: Path


def load_sample(
    spec: DatasetSpec, pair: Pair, *, crop_multiple: int | None, noise: NoiseStream | None = None
) -> Sample:
    """One test sample in the official order of operations: read, centre-crop, then (noise sets) add noise."""
    gt = centre_crop(read_rgb(pair.gt), crop_multiple)
    if spec.sigma is not None:  # a noise set (spec.synthesised), with its sigma
        if noise is None:
            raise DatasetError(f"{spec.name}: a noise stream is needed to synthesise its inputs")
        lq = noise.add(gt, spec.sigma)
    elif spec.degradation is not None:
        from ..degrade import degrade

        kind, level = spec.degradation
        lq = degrade(gt, kind, level, seed=synthetic_seed(kind, level, pair.name))
    else:
        assert pair.lq is not None
        lq = centre_crop(read_rgb(pair.lq), crop_multiple)
    return Sample(pair.name, lq, gt, pair.lq, pair.gt)


def iter_samples(
    located: Located,
    *,
    crop_multiple: int | None,
    noise: NoiseStream | None = None,
    limit: int | None = None,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[Sample | tuple[Pair, IrtoolError]]:
    """Samples in evaluation order; an unreadable pair yields (pair, error) instead, so one bad file stops nothing.

    Inputs that have no ground truth are yielded as errors too, so reports count them. `keep(i)` False leaves item i
    (pairs first, then the unpaired inputs) out, as another process evaluates it; its test noise is still drawn, so
    the items kept get the same noisy inputs as in a run over all of them.
    """
    spec = located.spec
    if noise is not None and spec.synthesised:
        noise.history.append(spec.name)
    pairs = located.pairs[:limit] if limit else located.pairs
    for i, pair in enumerate(pairs):
        if keep is not None and not keep(i):
            if noise is not None and spec.synthesised:
                try:  # exactly as load_sample would: an unreadable ground truth draws nothing
                    noise.skip(centre_crop(read_rgb(pair.gt), crop_multiple).shape)
                except IrtoolError:
                    pass
            continue
        try:
            yield load_sample(spec, pair, crop_multiple=crop_multiple, noise=noise)
        except IrtoolError as exc:
            yield pair, exc
    if limit and noise is not None and spec.synthesised:
        # Draw (and drop) the noise of the images left out, so that the next noise level gets the same realisation
        # as in a full run: --limit then shows a subset of the official noisy inputs, not other ones.
        for pair in located.pairs[limit:]:
            noise.skip(_cropped_shape(pair.gt, crop_multiple))
    if not limit:
        for k, name in enumerate(located.probe.unpaired_inputs):
            if keep is not None and not keep(len(pairs) + k):
                continue
            lq_dir = located.probe.lq_dir
            yield (
                Pair(name, Path(), lq_dir / name if lq_dir else None),
                DatasetError(f"{name}: no ground truth found ({spec.pairing})"),
            )


# --------------------------------------------------------------------------------------------------------------------
# Offline benchmark: clean photos + irtool's seeded degradations (`--dataset synthetic:noise25`)

#: RGB photographs shipped inside scikit-image's wheel (skimage/data/) that are free to use, with their terms as
#: scikit-image's `skimage.data` docstrings state them. Found on disk without importing scikit-image.
SKIMAGE_PHOTOS: dict[str, str] = {
    "astronaut.png": "NASA (Eileen Collins); public domain",
    "chelsea.png": "Stefan van der Walt; CC0",
    "coffee.png": "Rachel Michetti; CC0",
    "hubble_deep_field.jpg": "NASA/HubbleSite; public domain",
    "rocket.jpg": "SpaceX; public domain",
}


def skimage_photo_dir() -> Path | None:
    """scikit-image's bundled data folder, located through the import system without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def clean_photos(
    clean_dir: str | Path | None = None,
    *,
    recursive: bool = False,
    error: type[IrtoolError] | None = None,
    fallback: Iterable[str] | None = None,
) -> tuple[list[Path], str]:
    """Clean photos and where they came from ("--clean-dir DIR" or scikit-image): the images in `clean_dir` (its
    sub-folders too when `recursive`, hidden files skipped), else the `fallback` names (default `SKIMAGE_PHOTOS`)
    found in scikit-image's wheel. Raises `error` (default DatasetError) with one line when there are none.
    Used by the synthetic benchmarks and by `irtool calibrate`."""
    fail = error or DatasetError
    if clean_dir:
        folder = Path(clean_dir).expanduser()
        if not folder.is_dir():
            raise fail(f"--clean-dir {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
        readable: Iterable[str] = IMAGE_SUFFIXES
        if recursive:
            from ..images.files import IMAGE_SUFFIXES as readable

            found = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            photos = sorted(p for p in found if p.suffix.lower() in readable)
        else:
            photos = list_images(folder)
        if not photos:
            raise fail(f"--clean-dir {folder}: holds no images ({', '.join(sorted(readable))})")
        return photos, str(folder)
    photo_dir = skimage_photo_dir()
    names = list(SKIMAGE_PHOTOS if fallback is None else fallback)
    photos = [photo_dir / name for name in names if (photo_dir / name).is_file()] if photo_dir else []
    if not photos:
        raise fail(
            "no clean photos: pass --clean-dir DIR, or install scikit-image, whose wheel ships "
            "a few public-domain/CC0 photos (pip install scikit-image)"
        )
    return (sorted(photos, key=lambda p: p.name) if fallback is None else photos), f"scikit-image {photo_dir}"


def synthetic_hint(tasks: Iterable[str] = ()) -> str:
    """Where to turn without a download: the `synthetic:` sets, the ones for `tasks` first (rain -> synthetic:rain)."""
    from ..degrade import KINDS

    named = [f"synthetic:{t}" for t in dict.fromkeys(tasks) if t in KINDS]
    examples = named or ["synthetic:noise25", "synthetic:rain", "synthetic:haze-heavy"]
    return (
        f"offline, --dataset {examples[0]} needs no download (clean photos degraded by irtool.degrade; "
        f"synthetic:<kind><level>, kind one of {', '.join(KINDS)})"
    )


def parse_synthetic(name: str) -> tuple[str, float]:
    """("noise", 25.0) for "synthetic:noise25"; the level may be a number or light/medium/heavy, and defaults to
    medium ("synthetic:rain", "synthetic:haze-heavy", "synthetic:jpeg10")."""
    from .. import degrade

    body = name.strip().lower().split(":", 1)[1] if ":" in name else name.strip().lower()
    kinds = "|".join(sorted(degrade.KINDS, key=len, reverse=True))  # "lowlight" before any shorter kind
    match = re.fullmatch(rf"({kinds})[-_]?([0-9.]+|light|medium|heavy)?", body)
    if not match:
        raise DatasetError(
            f"not a synthetic dataset: {name} (synthetic:<kind><level>, kind one of {', '.join(degrade.KINDS)}; "
            "e.g. synthetic:noise25, synthetic:rain, synthetic:haze-heavy)"
        )
    kind = match.group(1)
    try:
        return kind, degrade.resolve_level(kind, match.group(2))
    except ValueError as exc:
        raise DatasetError(f"{name}: {exc}") from None


def synthetic_seed(kind: str, level: float, file_name: str) -> int:
    """Each photo's own seed, from what it is and what is done to it, so adding photos changes no other input."""
    return zlib.crc32(f"{kind}:{level:g}:{file_name}".encode())


def locate_synthetic(name: str, clean_dir: str | Path | None = None) -> Located:
    """`synthetic:<kind><level>`: clean photos (scikit-image's or --clean-dir) whose inputs `irtool.degrade` makes
    after the protocol's centre crop, seeded per image (`synthetic_seed`), so they are the same on every machine."""
    kind, level = parse_synthetic(name)
    photos, origin = clean_photos(clean_dir)
    folder = photos[0].parent
    licence = (
        "your own photos (--clean-dir)"
        if clean_dir
        else "; ".join(f"{n}: {terms}" for n, terms in SKIMAGE_PHOTOS.items() if (folder / n).is_file())
    )
    spec = DatasetSpec(
        name=f"synthetic:{kind}{level:g}",
        title=f"synthetic {kind} {level:g}",
        task=kind,
        layouts=(Layout("clean-dir" if clean_dir else "scikit-image", str(folder)),),
        protocol="moce",
        source=f"clean photos from {origin}, degraded by irtool.degrade",
        licence=licence,
        degradation=(kind, level),
        pairing="clean photos only; the input is irtool.degrade(photo, kind, level, seed=crc32(kind:level:file name))",
        notes="an offline check of the pipeline and of the router, not a benchmark with published figures",
    )
    probe = Probe(spec.layouts[0], folder, None, n_gt=len(photos), pairs=[Pair(p.name, p) for p in photos])
    return Located(spec, folder, probe)
