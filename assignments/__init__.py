"""Course assignments built on minimoe: handouts, skeletons generated from minimoe, tests, a grader."""
