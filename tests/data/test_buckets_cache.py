"""The memoised area-target table cannot be changed by a caller (it is shared by every image)."""

import pytest

from pixart_pipeline.data.buckets import _area_targets_by_key, canonical_area_target

AREA = 1024.0 * 1024.0


def test_cached_area_table_is_read_only():
    table = _area_targets_by_key(AREA, 2)
    key = next(k for k in table if k != 1.0)
    before = canonical_area_target(table[key][1], AREA)
    with pytest.raises(TypeError):
        table[key] = (key, (64, 64))  # would poison every later image of this key
    with pytest.raises((TypeError, AttributeError)):
        table.clear()
    # The same (cached) object comes back, unchanged, and so does the target it gives.
    assert _area_targets_by_key(AREA, 2) is table
    assert canonical_area_target(table[key][1], AREA) == before != (64, 64)
