"""A synthetic CT world: patients with anatomy and lesion instances, rendered to HU volumes.

Everything is analytic in world millimetres (LPS: x to the patient's left, y posterior, z superior),
so the same patient can be rendered on any grid: several studies (time points, lesions grow or
shrink, the patient lies slightly differently) and several series per study (contrast phase, noise).
This is what makes the corpus useful for the paper's problems: the same lesion instance recurs across
studies/series (intra-patient matching, Sec. V-B), lesions span several slices (cross-slice
propagation, Sec. V-A), and lesion types are not trivially separable (lung vessels look like
nodules on one slice, lymph nodes like vessels, liver tumours are only a little darker than liver).

The corpus generator (`generate.py`) decides which lesions each dataset labels; this module only knows
anatomy, lesions and rendering.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

LESION_TYPES = ("lung_nodule", "liver_tumor", "lymph_node", "kidney_lesion", "bone_lesion", "soft_tissue")

# z ranges (mm) of body regions; a scan of a region covers part of it.
REGIONS = {"chest": (225.0, 420.0), "abdomen": (60.0, 250.0), "chest_abdomen": (80.0, 400.0)}


@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]  # x, y, z mm
    radii: tuple[float, float, float]   # mm

    def inside(self, X, Y, Z, scale: float = 1.0):
        cx, cy, cz = self.centre
        rx, ry, rz = (r * scale for r in self.radii)
        return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + ((Z - cz) / rz) ** 2 <= 1.0


@dataclass(frozen=True)
class Lesion:
    """One lesion instance of a patient; `growth[t]` scales its radii at study t."""

    instance_id: str
    lesion_type: str
    shape: Ellipsoid                # at study 0, in the patient's body frame
    hu_delta: float                 # HU relative to the tissue it sits in (or absolute for some types)
    growth: tuple[float, ...]       # radius scale per study

    def radii_at(self, study: int) -> np.ndarray:
        return np.asarray(self.shape.radii) * self.growth[study]

    def diameter_mm(self, study: int) -> float:
        """Long axial diameter, as RECIST would measure it."""
        r = self.radii_at(study)
        return float(2 * max(r[0], r[1]))


@dataclass
class Patient:
    patient_id: str
    body_axes: tuple[float, float]          # body ellipse semi-axes x, y (mm)
    organ_shift: tuple[float, float, float]  # anatomical variation (mm)
    vessels: np.ndarray                      # lung vessels: [k, 5] x0, y0, dx/dz, dy/dz, radius
    lesions: list[Lesion] = field(default_factory=list)
    n_studies: int = 1
    study_offsets: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0),)  # how the patient lay

    # organs, in the body frame (mm); shifted per patient
    def organs(self) -> dict[str, Ellipsoid]:
        sx, sy, sz = self.organ_shift
        return {
            "lung_r": Ellipsoid((-72 + sx, 5 + sy, 330 + sz), (50, 68, 95)),
            "lung_l": Ellipsoid((72 + sx, 5 + sy, 330 + sz), (48, 68, 95)),
            "heart": Ellipsoid((18 + sx, -15 + sy, 270 + sz), (48, 42, 45)),
            "liver": Ellipsoid((-58 + sx, 5 + sy, 185 + sz), (68, 72, 62)),
            "spleen": Ellipsoid((78 + sx, 25 + sy, 195 + sz), (30, 38, 40)),
            "kidney_r": Ellipsoid((-68 + sx, 58 + sy, 110 + sz), (26, 28, 48)),
            "kidney_l": Ellipsoid((68 + sx, 58 + sy, 115 + sz), (26, 28, 48)),
        }


@dataclass(frozen=True)
class SeriesLook:
    """How one series renders: contrast phase, noise and reconstruction kernel (a scanner's domain)."""

    contrast: bool
    noise_hu: float
    # reconstruction kernel as an in-plane unsharp mask applied after the noise (so it shapes the noise
    # texture too, as a real kernel does): -1 = gaussian-smoothed (soft-tissue kernel), 0 = as rendered,
    # > 0 = edges and noise amplified (sharp lung / bone kernel)
    kernel: float = 0.0


def _lesion_site(rng: np.random.Generator, p: Patient, lesion_type: str) -> tuple[float, float, float]:
    o = p.organs()
    if lesion_type == "lung_nodule":
        lung = o["lung_r"] if rng.random() < 0.5 else o["lung_l"]
        return _point_in(rng, lung, 0.7)
    if lesion_type == "liver_tumor":
        return _point_in(rng, o["liver"], 0.65)
    if lesion_type == "kidney_lesion":
        k = o["kidney_r"] if rng.random() < 0.5 else o["kidney_l"]
        return _point_in(rng, k, 0.5)
    if lesion_type == "lymph_node":
        sx, sy, sz = p.organ_shift
        if rng.random() < 0.5:  # mediastinal: beside the aorta / between the lungs
            return (sx + rng.uniform(-28, 28), sy + rng.uniform(-5, 25), sz + rng.uniform(280, 360))
        # abdominal / retroperitoneal, beside the aorta and IVC
        side = -1 if rng.random() < 0.5 else 1
        return (sx + side * rng.uniform(18, 40), sy + rng.uniform(20, 45), sz + rng.uniform(90, 210))
    if lesion_type == "bone_lesion":
        sx, sy, sz = p.organ_shift
        return (sx + rng.uniform(-7, 7), sy + 62 + rng.uniform(-6, 6), sz + rng.uniform(70, 400))
    if lesion_type == "soft_tissue":  # body wall / subcutaneous
        ang = rng.uniform(0, 2 * np.pi)
        a, b = p.body_axes
        f = rng.uniform(0.80, 0.88)
        return (a * f * np.cos(ang), b * f * np.sin(ang), rng.uniform(70, 400))
    raise ValueError(f"unknown lesion type {lesion_type!r}")


def _point_in(rng, e: Ellipsoid, frac: float) -> tuple[float, float, float]:
    while True:
        u = rng.uniform(-1, 1, 3)
        if (u**2).sum() <= 1:
            return tuple(float(c + frac * r * v) for c, r, v in zip(e.centre, e.radii, u))


# Sizes (mm radius ranges) and HU per lesion type. Ranges echo DeepLesion's manual 3D test set scaled to
# the corpus: many small lesions, few large ones.
_RADIUS_MM = {
    "lung_nodule": (2.5, 10.0),
    "liver_tumor": (5.0, 16.0),
    "lymph_node": (5.0, 11.0),
    "kidney_lesion": (5.0, 12.0),
    "bone_lesion": (5.0, 9.0),
    "soft_tissue": (6.0, 14.0),
}


def make_patient(rng: np.random.Generator, patient_id: str, n_studies: int, lesion_types: dict[str, float],
                 n_lesions: tuple[int, int], z_band: tuple[float, float] | None = None) -> Patient:
    """A patient with anatomy, lung vessels and lesions drawn from `lesion_types` (type -> weight).

    `z_band` (mm): lesion centres fall in this body range (a patient whose disease one scan range
    follows); a type whose sites miss the band is redrawn."""
    body = (rng.uniform(135, 165), rng.uniform(95, 118))
    shift = tuple(float(v) for v in rng.uniform([-8, -6, -15], [8, 6, 15]))
    # lung vessels: thin tubes running roughly along z (on one slice they look like small nodules)
    k = 40
    vessels = np.column_stack([
        np.where(rng.random(k) < 0.5, -72, 72) + shift[0] + rng.uniform(-38, 38, k),
        5 + shift[1] + rng.uniform(-50, 50, k),
        rng.uniform(-0.35, 0.35, k), rng.uniform(-0.35, 0.35, k),
        rng.uniform(1.5, 3.2, k),
    ])
    p = Patient(patient_id, body, shift, vessels, n_studies=n_studies,
                study_offsets=tuple((0.0, 0.0, 0.0) if t == 0 else tuple(float(v) for v in rng.uniform(-4, 4, 3))
                                    for t in range(n_studies)))
    types = list(lesion_types)
    w = np.asarray([lesion_types[t] for t in types], float)
    n = int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    for i in range(n):
        # bone and body-wall lesions reach every z, so a band is always met; lesions do not overlap
        # (at any study's growth), so that every label is one lesion
        for _ in range(200):
            t = types[int(rng.choice(len(types), p=w / w.sum()))]
            site = _lesion_site(rng, p, t)
            lo, hi = _RADIUS_MM[t]
            r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            aspect = rng.uniform(0.75, 1.0, 2)
            radii = (r * aspect[0], r * aspect[1], r * rng.uniform(0.8, 1.3))
            apart = all(np.linalg.norm(np.subtract(site, o.shape.centre)) > 1.3 * (max(radii) + max(o.shape.radii))
                        for o in p.lesions)
            if apart and (z_band is None or z_band[0] <= site[2] <= z_band[1]):
                break
        hu = {"lung_nodule": rng.uniform(-30, 50), "liver_tumor": -rng.uniform(35, 60),
              "lymph_node": rng.uniform(35, 60), "kidney_lesion": rng.uniform(0, 20),
              "bone_lesion": rng.uniform(80, 180), "soft_tissue": rng.uniform(30, 60)}[t]
        growth = tuple(1.0 if s == 0 else float(rng.uniform(0.8, 1.25)) for s in range(n_studies))
        p.lesions.append(Lesion(f"{patient_id}-L{i:02d}", t, Ellipsoid(site, radii), float(hu), growth))
    return p


@dataclass(frozen=True)
class Grid:
    """A volume's sampling grid: voxel (k, j, i) [z, y, x] sits at origin + (i*sx, j*sy, k*sz)."""

    shape: tuple[int, int, int]             # nz, ny, nx
    spacing: tuple[float, float, float]     # sz, sy, sx (mm)
    origin: tuple[float, float, float]      # x, y, z (mm) of voxel (0, 0, 0)

    def axes(self):
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        ox, oy, oz = self.origin
        return ox + sx * np.arange(nx), oy + sy * np.arange(ny), oz + sz * np.arange(nz)

    def world_to_index(self, xyz) -> np.ndarray:
        """World mm -> continuous voxel index (x, y, z) in the project's convention (pixel i spans [i, i+1))."""
        sz, sy, sx = self.spacing
        return (np.asarray(xyz, float) - np.asarray(self.origin)) / np.asarray([sx, sy, sz]) + 0.5


def scan_grid(region: str, z_range: tuple[float, float], pixel_mm: float, slice_mm: float, size_px: int) -> Grid:
    """An axial scan centred on the body covering z_range (mm)."""
    nz = max(1, int(round((z_range[1] - z_range[0]) / slice_mm)))
    half = (size_px - 1) * pixel_mm / 2
    return Grid((nz, size_px, size_px), (slice_mm, pixel_mm, pixel_mm), (-half, -half, z_range[0]))


def render(p: Patient, study: int, look: SeriesLook, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Render one series of one study on `grid`; returns int16 HU [z, y, x]."""
    xs, ys, zs = grid.axes()
    off = np.asarray(p.study_offsets[study])
    # body frame coordinates of every voxel (the patient lay shifted by `off` at this study)
    Z, Y, X = np.meshgrid(zs - off[2], ys - off[1], xs - off[0], indexing="ij", sparse=True)
    a, b = p.body_axes
    ell = (X / a) ** 2 + (Y / b) ** 2
    hu = np.full(np.broadcast_shapes(Z.shape, Y.shape, X.shape), -1000.0, np.float32)
    body = ell <= 1.0
    hu = np.where(body, -90.0, hu)                                    # fat
    hu = np.where(body & (ell <= 0.86 ** 2) & (ell > 0.80 ** 2), 45.0, hu)  # muscle wall
    # inside the wall: fat (mediastinum, retroperitoneum, mesentery), where nodes sit as in real CT
    hu = np.where(body & (ell <= 0.80 ** 2), -70.0, hu)
    o = p.organs()
    c = look.contrast
    organ_hu = {"liver": 105.0 if c else 60.0, "spleen": 110.0 if c else 50.0, "heart": 140.0 if c else 40.0,
                "kidney_r": 160.0 if c else 32.0, "kidney_l": 160.0 if c else 32.0}
    for name in ("liver", "spleen", "heart", "kidney_r", "kidney_l"):
        hu = np.where(o[name].inside(X, Y, Z), organ_hu[name], hu)
    lungs = o["lung_r"].inside(X, Y, Z) | o["lung_l"].inside(X, Y, Z)
    hu = np.where(lungs, -850.0, hu)
    # lung vessels: tubes along z (nodule mimics on a single slice)
    for x0, y0, dx, dy, r in p.vessels:
        zc = Z - 330.0
        hu = np.where(lungs & ((X - x0 - dx * zc) ** 2 + (Y - y0 - dy * zc) ** 2 <= r * r), 30.0, hu)
    sx, sy, _ = p.organ_shift
    # great vessels (contrast-enhanced or not: lymph nodes look like them without contrast)
    aorta = ((X - sx + 12) ** 2 + (Y - sy - 35) ** 2 <= 11.0 ** 2) & (Z > 60) & (Z < 330)
    ivc = ((X - sx - 22) ** 2 + (Y - sy - 32) ** 2 <= 9.0 ** 2) & (Z > 60) & (Z < 250)
    hu = np.where(body & (aorta | ivc), 170.0 if c else 42.0, hu)
    # spine: cortical ring, cancellous core
    rr = (X - sx) ** 2 + (Y - sy - 62) ** 2
    hu = np.where(body & (rr <= 17.0 ** 2), 650.0, hu)
    hu = np.where(body & (rr <= 13.0 ** 2), 230.0, hu)
    for les in p.lesions:
        e = Ellipsoid(les.shape.centre, tuple(les.radii_at(study)))
        m = e.inside(X, Y, Z)
        if not m.any():
            continue
        base = {"liver_tumor": organ_hu["liver"], "kidney_lesion": 0.0}.get(les.lesion_type, 0.0)
        val = base + les.hu_delta if les.lesion_type == "liver_tumor" else les.hu_delta
        if les.lesion_type == "lymph_node" and c:
            val += 15.0  # nodes enhance a little, much less than vessels
        hu = np.where(m, val, hu)
    hu = hu + rng.normal(0.0, look.noise_hu, hu.shape).astype(np.float32)
    if look.kernel:
        smooth = ndimage.gaussian_filter(hu, sigma=(0, 1.0, 1.0))  # in-plane only: a 2D reconstruction kernel
        hu = smooth + (1.0 + look.kernel) * (hu - smooth)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def lesion_box_world(p: Patient, les: Lesion, study: int) -> tuple[np.ndarray, np.ndarray]:
    """World-space axis-aligned extent (lo, hi) of a lesion at a study (mm)."""
    c = np.asarray(les.shape.centre) + np.asarray(p.study_offsets[study])
    r = les.radii_at(study)
    return c - r, c + r


def lesion_centre_world(p: Patient, les: Lesion, study: int) -> np.ndarray:
    return np.asarray(les.shape.centre) + np.asarray(p.study_offsets[study])
