"""Tissue classes of the phantom and their attenuation in Hounsfield units (unenhanced CT)."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    AIR = 0            # outside the body, and gas in the stomach
    FAT = 1
    SOFT = 2           # muscle and other soft tissue
    LUNG = 3
    AIRWAY = 4         # airway lumen
    AIRWAY_WALL = 5
    HEART = 6
    BLOOD = 7          # aorta, pulmonary trunk and great vessels
    VESSEL = 8         # intrapulmonary vessels
    BONE = 9           # cortical bone
    MARROW = 10        # cancellous bone
    LIVER = 11
    FLUID = 12         # stomach contents, cerebrospinal fluid
    LESION = 13        # anything the findings painted


# Typical unenhanced values; lung gets an anterior-posterior gravity gradient on top of LUNG_HU.
HU: dict[Tissue, float] = {
    Tissue.AIR: -1000.0,
    Tissue.FAT: -100.0,
    Tissue.SOFT: 45.0,
    Tissue.LUNG: -850.0,
    Tissue.AIRWAY: -990.0,
    Tissue.AIRWAY_WALL: 30.0,
    Tissue.HEART: 40.0,
    Tissue.BLOOD: 42.0,
    Tissue.VESSEL: 35.0,
    Tissue.BONE: 900.0,
    Tissue.MARROW: 250.0,
    Tissue.LIVER: 58.0,
    Tissue.FLUID: 10.0,
}
LUNG_GRADIENT_HU = 70.0  # the most dependent lung is this much denser than the most anterior
METAL_HU = 3000.0
CALCIUM_HU = 650.0
