"""Readers that turn user files into normalised records, reporting bad input precisely.

Pools stream (`iter_pool_file`), preference sets are small and read whole (`read_pref_file`).
Bad records are returned as `Problem`s (path, line, field, reason), never raised.
"""

from curation.data.io._read import Problem
from curation.data.io.pool import POOL_FORMATS, PoolRecord, count_records, detect_pool_format, iter_pool_file
from curation.data.io.prefs import PREF_FORMATS, PrefRead, PrefRecord, detect_pref_format, read_pref_file, read_prefs

__all__ = ["POOL_FORMATS", "PREF_FORMATS", "PoolRecord", "PrefRead", "PrefRecord", "Problem", "count_records",
           "detect_pool_format", "detect_pref_format", "iter_pool_file", "read_pref_file", "read_prefs"]
