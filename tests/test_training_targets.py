"""AFP target maps (paper Sec. IV-B): centre region -> 1, ignore ring, uncertain box = ignore only."""
import torch

from lens_core.training.targets import afp_target_maps

STRIDE = 4
GRID = (24, 24)  # a 96 x 96 px image
BOX = torch.tensor([[16.0, 16.0, 56.0, 56.0]])  # 40 px wide, centre (36, 36)
NONE = torch.zeros(0, 4)


def square(lo, hi):
    m = torch.zeros(GRID, dtype=torch.bool)
    m[lo:hi + 1, lo:hi + 1] = True
    return m


def test_known_box_has_centre_ones_and_an_ignore_ring():
    center, ignore, reg = afp_target_maps(BOX, NONE, GRID, STRIDE, r_c=0.2, r_i=0.5)
    # B_ctn: cell centres (j + 0.5) * 4 within 0.2 * 40 / 2 = 4 px of 36 -> j in {8, 9}
    assert torch.equal(center.bool(), square(8, 9))
    # B_ign: within 0.5 * 40 / 2 = 10 px -> j in 6..11; the ring excludes the centre
    assert torch.equal(ignore, square(6, 11) & ~square(8, 9))
    # everything else is a negative (0, not ignored)
    assert center[~square(6, 11)].sum() == 0
    # Eq. 2 targets: distances from the cell centre (34, 34) to the borders (left, top, right, bottom)
    assert reg[:, 8, 8].tolist() == [18.0, 18.0, 22.0, 22.0]
    assert reg[:, 9, 9].tolist() == [22.0, 22.0, 18.0, 18.0]
    assert reg[:, ~center.bool()].abs().sum() == 0


def test_uncertain_box_is_only_an_ignore_region():
    center, ignore, reg = afp_target_maps(NONE, BOX, GRID, STRIDE, r_c=0.2, r_i=0.5)
    assert center.sum() == 0
    assert torch.equal(ignore, square(6, 11))  # B_ign, centre included: no B_ctn
    assert reg.abs().sum() == 0


def test_a_lesion_centre_inside_an_uncertain_box_stays_positive():
    center, ignore, _ = afp_target_maps(BOX, BOX + 2, GRID, STRIDE)
    assert torch.equal(center.bool(), square(8, 9))
    assert not (ignore & center.bool()).any()


def test_a_lesion_smaller_than_a_cell_still_owns_its_centre_cell():
    tiny = torch.tensor([[41.0, 9.0, 44.0, 12.0]])  # 3 px, centre (42.5, 10.5) -> cell (2, 10)
    center, _, reg = afp_target_maps(tiny, NONE, GRID, STRIDE)
    assert center.sum() == 1 and center[2, 10] == 1
    assert (reg[:, 2, 10] > 0).all()


def test_overlapping_centres_regress_the_smaller_lesion():
    # same centre (36, 36) as BOX; its B_ctn holds no cell centre, so only the centre cell (9, 9)
    small = torch.tensor([[30.0, 30.0, 42.0, 42.0]])
    center, _, reg = afp_target_maps(torch.cat([BOX, small]), NONE, GRID, STRIDE)
    assert reg[:, 9, 9].tolist() == [8.0, 8.0, 4.0, 4.0]  # cell centre (38, 38) in the small box
    assert reg[:, 8, 8].tolist() == [18.0, 18.0, 22.0, 22.0]  # only BOX's centre region
